"""Residuals against what normal tissue of the same look leaves: ``python -m benchmarks.expected_residual``.

A probe for issue 17 / 16: the raw residual's top pixels sit on bowel gas and organ edges that every
reconstruction misses, so the slice score mostly counts gas and edges. :class:`ExpectedResidual` divides each
pixel's residual by the mean residual of normal pixels whose *reconstruction* has the same intensity and
nearness to an edge. The table is fitted on normal phantoms that neither the models nor the test use (seeds
900000+, the calibration seeds' block), in the same mode; the test cases are the phantom track's (seeds
9000+). Scores compared on the same reconstructions (``fast`` by default):

* ``product``: the shipped score (top 5 % of the smoothed residual + kappa x discriminator-feature residual);
* ``residual``: the top 5 % of the smoothed residual alone;
* ``normalised``: the top 5 % of the smoothed residual divided by its expected value;
* ``... / scan``: the same slice scores divided by the median slice score of their own scan, a per-scan
  reference that removes what the patient's noise and build add to every slice (a scan has many slices, and
  an anomaly covers a minority of them);
* ``... / position``: the slice scores divided by the median score of the fitting phantoms' normal slices
  at the same body position (10 bins), the per-position reference the product's calibration applies.

The first three are raw slice scores, as ``model_selection`` ranks them. Writes
``benchmarks/results/expected_residual.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from AnomalyScoutLib.expected_residual import ExpectedResidual
from AnomalyScoutLib.inversion import InversionConfig
from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.scoring import ScoreConfig, residual_maps, top_fraction_mean
from benchmarks.data import PhantomSplit, in_range_only, phantom_case
from benchmarks.detectors import Detection
from benchmarks.evaluate import detection_metrics
from benchmarks.generator_runs import generator_run
from benchmarks.ours import GeneratorDetector
from benchmarks.phantom_track import sweep_summary
from benchmarks.results_io import RESULTS_DIR, placer_for, run_header, write_json
from benchmarks.slices import SliceSet, concatenate

__all__ = ["FIT_FIRST_SEED", "main", "normalised_detection", "relative_to_position", "relative_to_scan"]

#: Normal phantoms the table is fitted on: far from the training (1000+), validation (7000+) and test (9000+)
#: seeds.
FIT_FIRST_SEED = 900_000

#: Normalised residuals are ~1 for typical normal tissue; maps are divided by this for the pixel metrics,
#: which read maps in [0, 1].
_MAP_SCALE = 20.0


def _residuals(slices: SliceSet, reconstructions: np.ndarray, score: ScoreConfig) -> torch.Tensor:
    return residual_maps(
        torch.from_numpy(slices.images),
        torch.from_numpy(reconstructions),
        torch.from_numpy(slices.body),
        score.smoothing_px,
    )


def normalised_detection(
    slices: SliceSet, reconstructions: np.ndarray, expected: ExpectedResidual, score: ScoreConfig
) -> Detection:
    """Slice scores (top fraction of the normalised residual in the body), maps scaled for pixel metrics."""
    recon = torch.from_numpy(reconstructions)
    normalised = expected.normalise(_residuals(slices, reconstructions, score), recon)
    # 0 outside the body already: residual_maps masks the residual, and the division keeps the zeros
    scores = top_fraction_mean(normalised, torch.from_numpy(slices.body), score.top_fraction)
    return Detection(maps=(normalised / _MAP_SCALE).numpy(), slice_scores=scores.numpy().astype(np.float64))


def relative_to_scan(detection: Detection, case: np.ndarray) -> Detection:
    """Each slice score divided by the median slice score of its case (maps unchanged)."""
    scores = detection.slice_scores.astype(np.float64)
    medians = np.zeros_like(scores)
    for c in np.unique(case):
        medians[case == c] = np.median(scores[case == c])
    return Detection(maps=detection.maps, slice_scores=scores / np.maximum(medians, 1e-12))


def relative_to_position(
    detection: Detection,
    positions: np.ndarray,
    normal_scores: np.ndarray,
    normal_positions: np.ndarray,
    bins: int = 10,
) -> Detection:
    """Each slice score divided by the median score of normal slices in its position bin (equal-count bins
    of the normal slices' positions; slices beyond them use the first or last bin)."""
    edges = np.quantile(normal_positions, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    normal_bin = np.searchsorted(edges, normal_positions)
    medians = np.array([np.median(normal_scores[normal_bin == b]) for b in range(bins)])
    reference = medians[np.searchsorted(edges, positions)]
    scores = detection.slice_scores.astype(np.float64) / np.maximum(reference, 1e-12)
    return Detection(maps=detection.maps, slice_scores=scores)


def _evaluate(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    model = AnomalyModel.load(path, "cpu")
    placer = placer_for(model, "auto")
    fit_seeds = range(FIT_FIRST_SEED, FIT_FIRST_SEED + args.fit_cases)
    fit = concatenate(
        [phantom_case(s, "normal", model.resolution, model.window, placer=placer) for s in fit_seeds]
    )
    test_cases = PhantomSplit(per_type=args.per_type, n_normal=args.normals).test_cases
    test = concatenate(
        [phantom_case(s, k, model.resolution, model.window, placer=placer) for s, k in test_cases]
    )
    fit, _ = in_range_only(fit)
    test, excluded = in_range_only(test)
    score = ScoreConfig()
    detector = GeneratorDetector(args.mode, path, InversionConfig(mode=args.mode), score)
    key = placer.data_key(["expected-residual", args.fit_cases, args.per_type, args.normals])
    start = time.perf_counter()
    fit_run = generator_run(detector, fit, key + "-fit")
    test_run = generator_run(detector, test, key + "-test")
    fit_recon = fit_run.reconstructions.images.astype(np.float32)
    expected = ExpectedResidual.fit(
        torch.from_numpy(fit_recon), _residuals(fit, fit_recon, score), torch.from_numpy(fit.body)
    )
    test_recon = test_run.reconstructions.images.astype(np.float32)
    residual_only = ScoreConfig(kappa=0.0)
    detections = {
        "product": test_run.method_run().detection,
        "residual": test_run.method_run(residual_only).detection,
        "normalised": normalised_detection(test, test_recon, expected, score),
    }
    fit_scores = {
        "product": fit_run.method_run().detection.slice_scores,
        "normalised": normalised_detection(fit, fit_recon, expected, score).slice_scores,
    }
    for name, normal_scores in fit_scores.items():
        detections[f"{name} / scan"] = relative_to_scan(detections[name], test.case)
        detections[f"{name} / position"] = relative_to_position(
            detections[name], test.positions, normal_scores, fit.positions
        )
    entry: dict[str, Any] = {"path": str(path), "model_id": model.model_id, "mode": args.mode,
                             "fit_slices": len(fit), "test_slices": len(test),
                             "range_gate": excluded.as_dict(), "scores": {}}  # fmt: skip
    for name, detection in detections.items():
        metrics = detection_metrics(test, detection)
        entry["scores"][name] = {
            **sweep_summary(metrics),
            "case_auroc": metrics["overall"]["case_auroc"],
            "per_type": {t: m["slice_auroc"] for t, m in metrics.items() if t != "overall"},
        }
        summary = entry["scores"][name]
        print(f"[expected-residual] {path.name:28s} {name:10s} slice AUROC {summary['slice_auroc']:.3f}, "
              f"mean over types {summary['mean_type_auroc']:.3f}, pixel AP {summary['pixel_ap']:.3f}, "
              f"case AUROC {summary['case_auroc']:.3f}", flush=True)  # fmt: skip
    entry["seconds"] = round(time.perf_counter() - start, 1)
    entry["table"] = expected.to_dict()
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", type=Path, required=True)
    parser.add_argument("--mode", choices=("fast", "accurate"), default="fast")
    parser.add_argument("--fit-cases", type=int, default=6, help="normal phantoms the table is fitted on")
    parser.add_argument("--per-type", type=int, default=2, help="test cases per anomaly type")
    parser.add_argument("--normals", type=int, default=4, help="normal test cases")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "expected_residual.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    missing = [str(p) for p in args.models if not p.is_file()]
    if missing:
        print(f"expected-residual: no model file {', '.join(missing)}", file=sys.stderr)
        return 1
    results = {
        **run_header("expected_residual", "expected_residual", argv, started),
        "fit_seeds": f"{FIT_FIRST_SEED}-{FIT_FIRST_SEED + args.fit_cases - 1} (normal)",
        "rows": [_evaluate(path, args) for path in args.models],
    }
    write_json(results, args.out)
    print(f"[expected-residual] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
