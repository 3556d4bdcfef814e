"""A PNG montage of phantom cases: what was made, and where the anomalies are.

One row per case (at most ``max_cases``): for each anomaly the slice where it is largest, with the anomaly
mask outlined in red, then slices at fixed relative positions through the anatomy.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from AnomalyScoutLib.atomic import write_bytes_atomic  # noqa: E402
from AnomalyScoutLib.phantom.case import PhantomCase  # noqa: E402

__all__ = ["preview_slices", "save_preview"]

_POSITIONS = (0.08, 0.25, 0.45, 0.65, 0.8, 0.95)


def preview_slices(case: PhantomCase, count: int = len(_POSITIONS)) -> list[int]:
    """Slices worth showing, in order: for each anomaly the slice where its mask is largest, then slices at
    fixed positions p through the anatomy, up to ``count``."""
    n = case.volume.array_zyx.shape[0]
    chosen: list[int] = []
    for code in sorted({a.code for a in case.anomalies}):
        per_slice = (case.anomaly_mask == code).reshape(n, -1).sum(axis=1)
        if per_slice.any():
            chosen.append(int(per_slice.argmax()))
    for p in _POSITIONS:
        k = min(n - 1, int(p * n))
        if len(set(chosen)) < count and k not in chosen:
            chosen.append(k)
    return sorted(set(chosen))[:count]


def save_preview(cases: Sequence[PhantomCase], path: Path, max_cases: int = 8) -> None:
    """Write the montage atomically (temporary file, then rename) to ``path``."""
    shown = list(cases)[:max_cases]
    columns = len(_POSITIONS)
    figure, axes = plt.subplots(len(shown), columns, figsize=(2.2 * columns, 2.4 * len(shown)), squeeze=False)
    for row, case in zip(axes, shown):
        n = case.volume.array_zyx.shape[0]
        slices = preview_slices(case, columns)
        kinds = ",".join(a.kind for a in case.anomalies) or "normal"
        for column, axis in enumerate(row):
            axis.axis("off")
            if column >= len(slices):
                continue
            k = slices[column]
            axis.imshow(case.volume.array_zyx[k], cmap="gray", vmin=-250, vmax=350, interpolation="nearest")
            if case.anomaly_mask[k].any():
                axis.contour(case.anomaly_mask[k] > 0, levels=[0.5], colors="red", linewidths=0.6)
            axis.set_title(
                f"seed {case.seed} k={k} p={(k + 0.5) / n:.2f}" + ("" if column else f"\n{kinds}"), fontsize=7
            )
    figure.tight_layout()
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=80)
    finally:
        plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())
