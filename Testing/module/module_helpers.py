"""Data for the Slicer module's tests: a synthetic CT and a worker output folder that follows the contract.

A plain module (not ``conftest``) so that test files import it by a name no other folder uses.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

#: The synthetic case: (z, y, x) voxels, LPS spacing and origin; an "anomaly" box on one slice.
SHAPE_ZYX = (24, 40, 48)
SPACING_XYZ = (1.5, 1.25, 2.5)
ORIGIN_XYZ = (-30.0, -20.0, 100.0)
ANOMALY_SLICE = 15
ANOMALY_BOX_YX = (slice(12, 20), slice(10, 20))


def write_volume_file(array_zyx: np.ndarray, path: Path) -> None:
    """Write an array on the synthetic case's grid (identity direction)."""
    image = sitk.GetImageFromArray(array_zyx.astype(np.float32))
    image.SetSpacing(SPACING_XYZ)
    image.SetOrigin(ORIGIN_XYZ)
    sitk.WriteImage(image, str(path))


def synthetic_ct() -> np.ndarray:
    """An elliptic "body" of soft tissue in air, HU."""
    z, y, x = SHAPE_ZYX
    rows, cols = np.mgrid[:y, :x]
    body = ((rows - y / 2) / (0.42 * y)) ** 2 + ((cols - x / 2) / (0.45 * x)) ** 2 < 1
    ct = np.full(SHAPE_ZYX, -1000.0, np.float32)
    ct[:, body] = 40.0
    return ct


def write_contract_outputs(out_dir: Path, flagged=(ANOMALY_SLICE,)) -> dict:
    """Write a worker output folder exactly as ``docs/design.md`` specifies, with a known anomaly.

    Returns the ``scores.json`` content so tests compare against what was written, not against constants.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    ct = synthetic_ct()
    body = ct > -500
    residual = np.where(body, 0.01, 0.0).astype(np.float32)
    residual[ANOMALY_SLICE][ANOMALY_BOX_YX] = 0.8
    write_volume_file(residual, out_dir / "residual.nrrd")
    write_volume_file(ct, out_dir / "reconstruction.nrrd")
    n = SHAPE_ZYX[0]
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.1, 0.2, n)
    scores[list(flagged)] = 0.9
    slices = [
        {
            "slice_index": k,
            "position": (k + 0.5) / n,
            "score": float(scores[k]),
            "percentile": float(99.9 if k in flagged else 50.0),
            "flagged": k in flagged,
            "threshold": 0.5,
            # LPS -> RAS; the centre of the in-plane grid of canonical slice k (k grows superior here)
            "center_ras": [
                -(ORIGIN_XYZ[0] + SPACING_XYZ[0] * (SHAPE_ZYX[2] - 1) / 2),
                -(ORIGIN_XYZ[1] + SPACING_XYZ[1] * (SHAPE_ZYX[1] - 1) / 2),
                ORIGIN_XYZ[2] + SPACING_XYZ[2] * k,
            ],
        }
        for k in range(n)
    ]
    report = {
        "case_score": float(scores.max()),
        "case_percentile": 99.9,
        "case_flagged": bool(flagged),
        "model_id": "test-model",
        "mode": "fast",
        "fpr": 0.01,
        "device": "cpu",
        "timings": {},
        "input": "ct.nrrd",
        "slices": slices,
    }
    (out_dir / "scores.json").write_text(json.dumps(report))
    return report


#: Where the synthetic anomaly map is hot: the anomaly box's slice, a box beside the residual's, so that the
#: two heatmaps are told apart by their arrays.
MAP_BOX_YX = (slice(22, 30), slice(26, 36))


def write_anomaly_map(out_dir: Path) -> np.ndarray:
    """Write ``anomaly_map.nrrd`` as a model with a head leaves it (values in [0, 1], 0 outside the body) and
    return its array: a low body value, hot on :data:`ANOMALY_SLICE` in :data:`MAP_BOX_YX`."""
    body = synthetic_ct() > -500
    anomaly_map = np.where(body, 0.05, 0.0).astype(np.float32)
    anomaly_map[ANOMALY_SLICE][MAP_BOX_YX] = 0.9
    write_volume_file(anomaly_map, out_dir / "anomaly_map.nrrd")
    return anomaly_map


def load_volume_node(scene, path: Path, name: str, class_name: str = "vtkMRMLScalarVolumeNode"):
    """A volume node read by Slicer's own NRRD reader (as "Add data" would)."""
    node = scene.AddNewNodeByClass(class_name, name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.ReadData(node), path
    node.CreateDefaultDisplayNodes()
    return node


#: A liver-like box on the synthetic CT's grid (z, y, x).
ORGAN_BOX = (slice(5, 12), slice(10, 20), slice(12, 30))


def write_labels(array_zyx: np.ndarray, path: Path, spacing_xyz=SPACING_XYZ, origin_xyz=ORIGIN_XYZ) -> Path:
    """Write a label map (uint8), by default on the synthetic case's grid."""
    image = sitk.GetImageFromArray(array_zyx.astype(np.uint8))
    image.SetSpacing(spacing_xyz)
    image.SetOrigin(origin_xyz)
    sitk.WriteImage(image, str(path))
    return path


def segmentation_from_labels(scene, labels_path: Path, name: str = "liver model"):
    """A segmentation node imported from a label map file, as a model's output loaded into Slicer would be."""
    import slicer

    labelmap = load_volume_node(scene, labels_path, "labels", "vtkMRMLLabelMapVolumeNode")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, node)
    scene.RemoveNode(labelmap)
    return node, node.GetSegmentation().GetNthSegmentID(0)


def organ_labels() -> np.ndarray:
    """The organ of :data:`ORGAN_BOX` as a label map on the synthetic case's grid."""
    labels = np.zeros(SHAPE_ZYX, np.uint8)
    labels[ORGAN_BOX] = 1
    return labels
