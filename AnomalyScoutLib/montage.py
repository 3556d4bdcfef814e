"""``flagged.png``: the most anomalous slices of a case at a glance, heatmap over the CT.

A reviewer opening the output folder without Slicer should see in one picture which slices the model finds
unlike normal anatomy, where in the slice, and how unusual they are. Each panel shows one canonical slice
(columns run towards the patient's left, as on an axial display), the residual heatmap where it exceeds a
fraction of the shown maximum (so normal tissue is not tinted), and a title with the slice number, score and
percentile, red when the slice is flagged. Drawn with matplotlib's object API on the Agg canvas: no display
and no global pyplot state, so it works in a worker process and in tests.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ANOMALY_MAP_LABEL",
    "MATPLOTLIB_MODULES",
    "RESIDUAL_LABEL",
    "MontagePanel",
    "most_anomalous",
    "write_montage",
]

#: Display window of the CT under the heatmap (a standard abdominal soft-tissue window, HU).
CT_WINDOW_HU = (-160.0, 240.0)
#: Residuals below this fraction of the shown maximum stay transparent.
HEATMAP_FLOOR = 0.25


#: What :func:`write_montage` imports (matplotlib's object API on the Agg canvas).
MATPLOTLIB_MODULES = ("matplotlib.backends.backend_agg", "matplotlib.figure")

#: Colour-bar labels of the two heatmaps a montage can show.
RESIDUAL_LABEL = "residual (normalised HU)"
ANOMALY_MAP_LABEL = "anomaly map (learned head, 0-1)"


@dataclass(frozen=True)
class MontagePanel:
    """One slice to show: canonical ``(rows, cols)`` CT in HU and its heatmap on the same grid (the residual,
    or the learned anomaly map of a model with a head), and optionally a boolean ``contour`` mask (a
    segmentation under review) drawn as an outline."""

    slice_index: int
    ct_hu: np.ndarray
    heatmap: np.ndarray
    score: float
    percentile: float
    flagged: bool
    contour: np.ndarray | None = None
    #: Shown under the score ("out of range (above)", "riskiest: denoiser").
    note: str = ""
    #: False for a slice the model does not judge (out of its range): its title is grey.
    judged: bool = True


def most_anomalous(scores: np.ndarray, percentiles: np.ndarray, count: int) -> list[int]:
    """Indices of the ``count`` most anomalous slices: highest percentile first, score breaking ties."""
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    ranks = np.nan_to_num(np.asarray(percentiles, dtype=np.float64), nan=0.0)
    order = np.lexsort((-scores, -ranks))
    return [int(i) for i in order[:count]]


def write_montage(
    path: str | os.PathLike[str],
    panels: Sequence[MontagePanel],
    spacing_rc_mm: Sequence[float],
    title: str = "most anomalous slices (red: flagged)",
    heatmap_label: str = RESIDUAL_LABEL,
) -> None:
    """Draw ``panels`` in a grid (up to 4 per row) and save a PNG to ``path``.

    ``spacing_rc_mm`` keeps anatomy in proportion when rows and columns have different pixel sizes.
    """
    # matplotlib is imported here, not with the module: importing it costs about a second, which every
    # importer of the engine (the worker, ``anomalyscout score`` before its first slice) would pay up front.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not panels:
        raise ValueError("a montage needs at least one slice")
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(3.2 * columns, 3.4 * rows), dpi=100, facecolor="black")
    FigureCanvasAgg(figure)
    vmax = max(float(np.max(p.heatmap)) for p in panels) or 1.0
    aspect = float(spacing_rc_mm[0]) / float(spacing_rc_mm[1])
    for n, panel in enumerate(panels):
        axes = figure.add_subplot(rows, columns, n + 1)
        axes.imshow(panel.ct_hu, cmap="gray", vmin=CT_WINDOW_HU[0], vmax=CT_WINDOW_HU[1], aspect=aspect)
        heat = np.ma.masked_less(panel.heatmap, HEATMAP_FLOOR * vmax)
        image = axes.imshow(heat, cmap="inferno", vmin=0.0, vmax=vmax, alpha=0.6, aspect=aspect)
        if panel.contour is not None and panel.contour.any():
            axes.contour(panel.contour.astype(np.float32), levels=[0.5], colors="cyan", linewidths=0.8)
        percentile = "" if not math.isfinite(panel.percentile) else f", p{panel.percentile:.1f}"
        axes.set_title(
            f"slice {panel.slice_index}: {panel.score:.3g}{percentile}"
            + (f"\n{panel.note}" if panel.note else ""),
            color="red" if panel.flagged else ("white" if panel.judged else "grey"),
            fontsize=9,
            # A fixed height skips matplotlib's search for tick labels above the axes (there are none: the
            # axes are off), which took a third of the drawing time; the title lands where it did.
            y=1.0,
        )
        axes.set_axis_off()
    colorbar = figure.colorbar(image, ax=figure.axes, shrink=0.6)
    colorbar.set_label(heatmap_label, color="white")
    colorbar.ax.tick_params(colors="white")
    figure.suptitle(title, color="white")
    figure.savefig(os.fspath(path), format="png", facecolor=figure.get_facecolor())
