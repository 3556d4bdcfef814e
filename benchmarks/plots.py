"""The benchmark's pictures: ROC curves per anomaly type, scores along the slices, best/worst montages.

Each function writes one PNG atomically (temporary name, then rename) with matplotlib's Agg backend, so the
harness runs headless and a failed plot never leaves half a picture in ``docs/benchmarks/``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402

from AnomalyScoutLib import metrics  # noqa: E402
from AnomalyScoutLib.atomic import atomic_destination
from benchmarks.evaluate import MethodRun  # noqa: E402
from benchmarks.slices import SliceSet  # noqa: E402

__all__ = [
    "plot_scatter",
    "plot_curve",
    "plot_montage",
    "plot_roc_per_type",
    "plot_score_along_slices",
    "save_figure",
]


def save_figure(figure: plt.Figure, path: Path) -> None:
    """Write ``figure`` to ``path`` atomically and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_destination(path, suffix=".png") as temporary:
            figure.savefig(temporary, dpi=90, bbox_inches="tight")
    finally:
        plt.close(figure)


def plot_roc_per_type(slices: SliceSet, runs: Sequence[MethodRun], path: Path, title: str) -> None:
    """One panel per anomaly type (its cases + the normal controls), one ROC curve per method."""
    kinds = slices.case_anomaly
    types = [t for t in sorted(set(kinds)) if t != "normal"] + ["overall"]
    columns = min(3, len(types))
    rows = -(-len(types) // columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(4.2 * columns, 4.0 * rows), squeeze=False, layout="constrained"
    )
    for ax, kind in zip(axes.ravel(), types):
        keep = np.ones(len(slices), bool) if kind == "overall" else (kinds == kind) | (kinds == "normal")
        labels = slices.labels[keep]
        for run in runs:
            fpr, tpr, _ = metrics.roc_curve(labels, run.detection.slice_scores[keep])
            auc = metrics.roc_auc(labels, run.detection.slice_scores[keep])
            ax.plot(fpr, tpr, label=f"{run.name} ({auc:.2f})", lw=1.4)
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
        ax.set_title(
            f"{kind}: {int(labels.sum())} anomalous / {int((~labels).sum())} normal slices", fontsize=9
        )
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
        ax.legend(fontsize=7, loc="lower right")
    for ax in axes.ravel()[len(types) :]:
        ax.axis("off")
    figure.suptitle(title)
    save_figure(figure, path)


def plot_score_along_slices(
    slices: SliceSet, runs: Sequence[MethodRun], case_names: Sequence[str], path: Path, title: str
) -> None:
    """Slice score against slice index for a few cases, anomalous slices shaded (scores min-max scaled per
    method over all slices so that methods share one axis)."""
    figure, axes = plt.subplots(
        len(case_names), 1, figsize=(9, 2.2 * len(case_names)), squeeze=False, layout="constrained"
    )
    names = [c.name for c in slices.cases]
    for ax, case_name in zip(axes[:, 0], case_names):
        keep = slices.case == names.index(case_name)
        k = slices.slice_index[keep]
        order = np.argsort(k)
        step = float(np.median(np.diff(np.sort(k)))) if k.size > 1 else 1.0  # slices kept (stride)
        for index in np.flatnonzero(slices.labels[keep]):
            ax.axvspan(k[index] - step / 2, k[index] + step / 2, color="tab:red", alpha=0.15, lw=0)
        for run in runs:
            all_scores = run.detection.slice_scores
            low, high = np.min(all_scores), np.max(all_scores)
            scaled = (all_scores[keep] - low) / max(high - low, 1e-12)
            ax.plot(k[order], scaled[order], lw=1.2, label=run.name)
        ax.set_ylabel("score (scaled)")
        ax.set_title(f"{case_name} (shaded: slices with the inserted anomaly)", fontsize=9)
    axes[-1, 0].set_xlabel("slice index k (0 = most inferior)")
    axes[0, 0].legend(fontsize=7, ncol=4, loc="upper left")
    figure.suptitle(title)
    save_figure(figure, path)


def plot_montage(slices: SliceSet, run: MethodRun, path: Path, title: str, per_row: int = 4) -> None:
    """Three rows: best-detected anomalous slices, most-missed anomalous slices, highest-scoring normals.

    Each tile shows the slice with the method's map over it (red) and the truth outline (green).
    """
    scores = run.detection.slice_scores
    positive, negative = np.flatnonzero(slices.labels), np.flatnonzero(~slices.labels)
    by_score = np.argsort(scores)
    ranked_pos = [i for i in by_score[::-1] if i in set(positive)]
    rows = {
        "best detected (highest-scoring anomalous)": ranked_pos[:per_row],
        "most missed (lowest-scoring anomalous)": ranked_pos[::-1][:per_row],
        "false alarms (highest-scoring normal)": [i for i in by_score[::-1] if i in set(negative)][:per_row],
    }
    figure, axes = plt.subplots(3, per_row, figsize=(2.6 * per_row, 8.4), squeeze=False, layout="constrained")
    for r, (label, indices) in enumerate(rows.items()):
        for c in range(per_row):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(indices):
                continue
            i = indices[c]
            ax.imshow(slices.images[i], cmap="gray", vmin=-1, vmax=1)
            if run.detection.maps is not None:
                heat = np.ma.masked_less(run.detection.maps[i], 0.1)
                ax.imshow(heat, cmap="autumn_r", vmin=0.1, vmax=0.8, alpha=0.55)
            if slices.anomaly[i].any():
                ax.contour(slices.anomaly[i], levels=[0.5], colors="lime", linewidths=0.8)
            case = slices.cases[slices.case[i]]
            ax.set_title(f"{case.name} k={slices.slice_index[i]}\nscore {scores[i]:.3g}", fontsize=7)
        axes[r, 0].text(
            -0.08,
            0.5,
            label,
            transform=axes[r, 0].transAxes,
            rotation=90,
            va="center",
            ha="right",
            fontsize=8,
        )
    figure.suptitle(title)
    save_figure(figure, path)


def plot_curve(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    path: Path,
    title: str,
) -> None:
    """A simple line plot of named (x, y) series, e.g. slice AUROC against refinement steps."""
    figure, ax = plt.subplots(figsize=(5.5, 3.8), layout="constrained")
    for name, (x, y) in series.items():
        ax.plot(x, y, marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    save_figure(figure, path)


def plot_scatter(
    series: Mapping[str, tuple[np.ndarray, np.ndarray]], highlight: np.ndarray, path: Path, title: str
) -> None:
    """One panel per named (x, y) series; points where ``highlight`` is True (anomalous slices) in red."""
    figure, axes = plt.subplots(
        1, len(series), figsize=(4.6 * len(series), 4.0), squeeze=False, layout="constrained"
    )
    for ax, (name, (x, y)) in zip(axes[0], series.items()):
        ax.scatter(x[~highlight], y[~highlight], s=8, alpha=0.5, color="tab:blue", label="normal slice")
        ax.scatter(x[highlight], y[highlight], s=10, alpha=0.7, color="tab:red", label="anomalous slice")
        rho = metrics.spearman(x, y)
        ax.set_title(f"{name} (Spearman {rho:.2f})", fontsize=9)
        ax.set_xlabel("anomaly score")
        ax.set_ylabel("1 - Dice of the U-Net")
        ax.legend(fontsize=7)
    figure.suptitle(title)
    save_figure(figure, path)
