"""Offscreen pictures of a Slicer slice view with slicer-core alone (no OpenGL, no Qt).

``vtkMRMLSliceLogic`` blends the background and foreground layers of its slice node into an RGBA image, the
same pipeline the Slicer application draws, so a test can look at the colours a user would see.

Run as a script to make the README picture from a real worker run::

    python Testing/module/slice_rendering.py CT.nrrd RESULTS_DIR docs/slicer_overlay.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support


def render_axial(slice_logic: slicer.vtkMRMLSliceLogic, offset_s: float, size: int = 256) -> np.ndarray:
    """The slice view's blended RGBA picture at ``offset_s`` (mm, RAS "S"), row 0 at the top, as displayed."""
    slice_node = slice_logic.GetSliceNode()
    slice_node.SetDimensions(size, size, 1)
    slice_logic.FitSliceToAll()
    slice_logic.SetSliceOffset(offset_s)
    producer = slice_logic.GetImageDataConnection().GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(0)
    width, height, _ = image.GetDimensions()
    rgba = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)
    return rgba[::-1].copy()  # VTK's first row is the bottom one


def ras_to_pixel(slice_logic: slicer.vtkMRMLSliceLogic, ras) -> tuple[int, int]:
    """(row, column) of a RAS point in :func:`render_axial`'s picture."""
    xy_to_ras = vtk.vtkMatrix4x4()
    xy_to_ras.DeepCopy(slice_logic.GetSliceNode().GetXYToRAS())
    xy_to_ras.Invert()
    x, y, _, _ = xy_to_ras.MultiplyPoint((*ras, 1.0))
    height = slice_logic.GetSliceNode().GetDimensions()[1]
    return height - 1 - round(y), round(x)


def heat_pixels(rgba: np.ndarray) -> np.ndarray:
    """Where the picture is tinted by the heat table: red clearly above blue (grey CT has R = G = B)."""
    red, blue = rgba[..., 0].astype(int), rgba[..., 2].astype(int)
    return red - blue > 40


def crop_to_content(rgba: np.ndarray, margin: int = 12) -> np.ndarray:
    """The picture cut to what is drawn (non-black), plus a margin: the field of view is often mostly air."""
    rows, cols = np.nonzero(rgba[..., :3].max(axis=2) > 16)
    if rows.size == 0:
        return rgba
    top, left = max(rows.min() - margin, 0), max(cols.min() - margin, 0)
    return rgba[top : rows.max() + margin + 1, left : cols.max() + margin + 1]


def main(argv: list[str] | None = None) -> int:
    from AnomalyScoutModuleLib.scene import SceneResults, read_score_report
    from module_helpers import load_volume_node  # the script shares the tests' scene set-up

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ct", type=Path)
    parser.add_argument("results", type=Path, help="the worker's output folder for this CT")
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--truth", type=Path, help="label map of the true anomaly, drawn as an outline")
    parser.add_argument("--slice", type=int, help="canonical slice to show (default: the highest score)")
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args(argv)

    scene = slicer.vtkMRMLScene()
    colours = slicer.vtkSlicerColorLogic()
    colours.SetMRMLScene(scene)
    colours.AddDefaultColorNodes()
    slicer.mrmlScene = scene
    app_logic = slicer.vtkMRMLApplicationLogic()
    app_logic.SetMRMLScene(scene)
    slice_logic = slicer.vtkMRMLSliceLogic()
    slice_logic.SetMRMLApplicationLogic(app_logic)
    slice_logic.SetMRMLScene(scene)
    slice_logic.AddSliceNode("Red").SetOrientation("Axial")
    ct = load_volume_node(scene, args.ct, "CT")
    ct.GetDisplayNode().SetAutoWindowLevel(False)
    ct.GetDisplayNode().SetWindowLevel(400, 40)
    SceneResults(scene).show_results(ct, args.results, opacity=0.7)
    if args.truth is not None:
        truth = load_volume_node(scene, args.truth, "truth", "vtkMRMLLabelMapVolumeNode")
        slice_logic.GetSliceCompositeNode().SetLabelVolumeID(truth.GetID())
        slice_logic.GetSliceCompositeNode().SetLabelOpacity(1.0)
        slice_logic.GetSliceNode().SetUseLabelOutline(True)
    report = read_score_report(args.results)
    by_index = {s.slice_index: s for s in report.slices}
    shown = by_index[args.slice] if args.slice is not None else max(report.slices, key=lambda s: s.score)
    rgba = crop_to_content(render_axial(slice_logic, shown.center_ras[2], args.size))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.imsave(args.out, rgba[..., :3])
    tinted = heat_pixels(rgba).sum()
    print(f"{args.out}: slice {shown.slice_index} (score {shown.score:.3g}), {tinted} tinted pixels")
    return 0


if __name__ == "__main__":
    sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[2] / "AnomalyScout")]
    sys.exit(main())
