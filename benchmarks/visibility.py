"""What the detector can see: each anomalous test case's contrast in the model's window against how well its
slices are ranked.

Usage (repository root; a few CPU minutes once the phantom caches exist)::

    nice -n 10 python -m benchmarks.visibility [--model models/default.safetensors] [--per-type 10]

A per-type AUROC mixes cases a reader would see at a glance with cases that change the slice by less than its
noise. This track separates them. For every anomalous held-out phantom (seeds 9000+, every 4th slice, placed
by anatomy) it measures

* the **visible contrast**: the mean absolute change the anomaly makes inside its mask, in HU *after* the
  model's window (the phantom is drawn again without its anomaly: same seed, same anatomy). A metal clip at
  1800 HU and the bone beside it are the same value to a network reading -250..350 HU, so this is what any
  detector in the window can see, whatever its score;
* the **case AUROC**: that case's anomalous slices against every control slice, ranked by the model's slice
  score as a percentile among normal slices near the same position (6 normal phantoms, seeds 900000+, as
  ``benchmarks.ensemble`` and the product's calibration do).

It reports the Spearman correlation of the two, the AUROC of cases above and below the median contrast of
their type, a scatter plot (``benchmarks/results/visibility.png``) and the clearest anomalies the model
missed, each with its reconstruction, residual and map (``visibility_misses.png``). Results:
``benchmarks/results/visibility.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from AnomalyScoutLib import metrics
from AnomalyScoutLib.inversion import InversionConfig
from AnomalyScoutLib.scoring import ScoreConfig
from benchmarks.data import phantom_case
from benchmarks.detectors import Detection
from benchmarks.ensemble import CALIBRATION_SEEDS, percentile_test_set, position_percentiles
from benchmarks.generator_runs import GeneratorRun, generator_run
from benchmarks.head_detector import HeadRun
from benchmarks.ours import GeneratorDetector
from benchmarks.plots import save_figure
from benchmarks.results_io import RESULTS_DIR, run_header, write_json
from benchmarks.slices import SliceSet

__all__ = ["case_contrast", "main"]


def case_contrast(case: SliceSet, twin: SliceSet, hu_per_unit: float) -> float:
    """Mean absolute change (HU, in the window) inside the anomaly mask of ``case``'s anomalous slices,
    against the same slices of ``twin`` (the same phantom drawn without its anomaly)."""
    rows = {int(k): i for i, k in enumerate(twin.slice_index)}
    changes = []
    for i in np.flatnonzero(case.labels):
        j = rows.get(int(case.slice_index[i]))
        if j is None:
            raise ValueError(f"slice {case.slice_index[i]} of {case.cases[0].name} has no twin")
        changes.append(np.abs(case.images[i] - twin.images[j])[case.anomaly[i]])
    return float(np.concatenate(changes).mean() * hu_per_unit) if changes else float("nan")


def _scored(model_path: Path, slices: SliceSet, key: str) -> tuple[GeneratorRun, Detection]:
    """The model's fast reconstructions, and its own maps and slice scores: its head's when it has one, else
    the residual's."""
    detector = GeneratorDetector("model", model_path, InversionConfig(mode="fast"), ScoreConfig())
    run = generator_run(detector, slices, key)
    if detector.model.head is not None:
        return run, HeadRun("head", run).method_run().detection
    return run, run.method_run(ScoreConfig()).detection


def _plot_misses(
    cases: dict[int, dict[str, Any]], run: GeneratorRun, maps: np.ndarray, path: Path, count: int = 4
) -> None:
    """The clearest anomalies the model missed (case AUROC < 0.5, highest contrast first), each on its
    slice with the most anomaly: the slice, the reconstruction, the residual and the model's map, the
    anomaly outlined. ``cases``: the rows of the results by their case's number in ``run.slices``."""
    test = run.slices
    missed = [c for c in cases if cases[c]["case_auroc"] < 0.5]
    missed = sorted(missed, key=lambda c: -cases[c]["contrast_hu"])[:count]
    if not missed:
        return
    figure, axes = plt.subplots(len(missed), 4, figsize=(10, 2.6 * len(missed)), squeeze=False)
    for ax_row, c in zip(axes, missed):
        case = cases[c]
        rows = np.flatnonzero((test.case == c) & test.labels)
        i = rows[np.argmax(test.anomaly[rows].reshape(len(rows), -1).sum(axis=1))]
        image, reconstruction = test.images[i], run.reconstructions.images[i]
        panels = (
            ("slice", image, "gray", (-1, 1)),
            ("reconstruction", reconstruction, "gray", (-1, 1)),
            ("|residual|", np.abs(image - reconstruction), "gray", (0, 1)),
            ("map", maps[i], "magma", (0, None)),
        )
        for ax, (title, picture, cmap, (low, high)) in zip(ax_row, panels):
            ax.imshow(picture, cmap=cmap, vmin=low, vmax=high)
            ax.contour(test.anomaly[i], levels=[0.5], colors="cyan", linewidths=0.8)
            ax.set_title(f"{case['type']} {case['seed']}, slice {test.slice_index[i]}: {title}", fontsize=7)
            ax.axis("off")
    figure.suptitle("Missed although visible: contrast high, case AUROC < 0.5", fontsize=10)
    save_figure(figure, path)


def _plot(cases: list[dict[str, Any]], path: Path, title: str) -> None:
    figure, ax = plt.subplots(figsize=(6.0, 4.2), layout="constrained")
    for kind in sorted({c["type"] for c in cases}):
        chosen = [c for c in cases if c["type"] == kind]
        ax.scatter(
            [max(c["contrast_hu"], 0.5) for c in chosen], [c["case_auroc"] for c in chosen], s=22, label=kind
        )
    ax.set_xscale("log")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("visible contrast inside the anomaly (HU, in the model's window)")
    ax.set_ylabel("case AUROC (its slices against the controls')")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/default.safetensors"))
    parser.add_argument("--per-type", type=int, default=10, help="test cases per anomaly type (and controls)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "visibility.json")
    args = parser.parse_args(argv)
    started = time.time()
    if not args.model.is_file():
        print(f"visibility: no model file {args.model}", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    model, placer, data, normals, normal_key = percentile_test_set(args.model, args.per_type)
    test = data.test
    test_run, test_detection = _scored(args.model, test, data.data_key)
    percentile = position_percentiles(
        _scored(args.model, normals, normal_key)[1].slice_scores,
        normals.positions,
        test_detection.slice_scores,
        test.positions,
    )
    controls = test.case_anomaly == "normal"
    hu_per_unit = model.window.width / 2
    case_rows: dict[int, dict[str, Any]] = {}  # by the case's number in the test set
    for c, info in enumerate(test.cases):
        rows = (test.case == c) & test.labels
        if info.anomaly == "normal" or not rows.any():
            continue
        twin = phantom_case(info.seed, "normal", model.resolution, model.window, placer=placer)
        chosen = rows | controls
        case_rows[c] = {
            "type": info.anomaly,
            "seed": info.seed,
            "anomalous_slices": int(rows.sum()),
            "median_area_px": float(np.median(test.anomaly[rows].reshape(int(rows.sum()), -1).sum(1))),
            "contrast_hu": case_contrast(test.subset(test.case == c), twin, hu_per_unit),
            "case_auroc": metrics.roc_auc(test.labels[chosen], percentile[chosen]),
        }
    cases = list(case_rows.values())
    per_type = {}
    for kind in data.split.types:
        chosen = [c for c in cases if c["type"] == kind]
        contrast = np.array([c["contrast_hu"] for c in chosen])
        auroc = np.array([c["case_auroc"] for c in chosen])
        high = contrast > np.median(contrast)
        per_type[kind] = {
            "cases": len(chosen),
            "contrast_hu_median": float(np.median(contrast)),
            "contrast_hu_range": [float(contrast.min()), float(contrast.max())],
            "spearman_contrast_vs_auroc": metrics.spearman(contrast, auroc),
            "mean_case_auroc_above_median_contrast": float(auroc[high].mean()),
            "mean_case_auroc_at_or_below": float(auroc[~high].mean()),
        }
        print(
            f"[visibility] {kind:12s} contrast median {np.median(contrast):6.1f} HU, Spearman "
            f"{per_type[kind]['spearman_contrast_vs_auroc']:+.2f}, case AUROC above / below median "
            f"{auroc[high].mean():.2f} / {auroc[~high].mean():.2f}",
            flush=True,
        )
    figure = args.out.with_suffix(".png")
    _plot(cases, figure, f"{model.model_id}: what the window shows against what is found")
    misses = args.out.with_name(f"{args.out.stem}_misses.png")
    _plot_misses(case_rows, test_run, test_detection.maps, misses)
    write_json(
        {
            **run_header("visibility", "visibility", argv, started),
            "model": str(args.model),
            "model_id": model.model_id,
            "score": "the model's slice score as a percentile among normal slices near its position",
            "calibration_seeds": list(CALIBRATION_SEEDS),
            "control_slices": int(controls.sum()),
            "all_cases": {
                "spearman_contrast_vs_auroc": metrics.spearman(
                    np.array([c["contrast_hu"] for c in cases]), np.array([c["case_auroc"] for c in cases])
                ),
            },
            "per_type": per_type,
            "cases": cases,
            "figure": str(figure),
            "misses_figure": str(misses),
        },
        args.out,
    )
    print(f"[visibility] wrote {args.out} and {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
