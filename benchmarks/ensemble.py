"""Complementary detectors, each calibrated per body position, combined: does the whole beat its parts?

Usage (repository root; a few CPU minutes once the anomaly-map track's caches exist)::

    nice -n 10 python -m benchmarks.ensemble [--head-model benchmarks/models/cpu-mid-with-head.safetensors]

The learned head (issue 16) and the per-position atlas fail on different anomalies (docs/benchmarks.md,
section 6: the head leads on tumour and deformation, the atlas on ascites), so a slice that either finds
unusual for its position may be the better flag. Each detector's slice score is turned into a percentile
among normal slices near the same position, as the product's calibration does (normal phantoms seeds
900000-900005, every 2nd slice, never trained on), and the percentiles are combined by their maximum (flag
when either detector would: at a fixed false-positive rate each then needs half the rate) or their mean.
Rows: the shipped model's fast residual, the head, the atlas, and the combinations; on the anomaly-map
track's 24 test cases (every 4th slice, placed by anatomy). Writes ``benchmarks/results/ensemble.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from AnomalyScoutLib.inversion import InversionConfig
from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.preprocessing import HUWindow
from AnomalyScoutLib.scoring import ScoreConfig
from benchmarks.baselines.atlas import PositionAtlas
from benchmarks.data import SlicePlacer, in_range_only, phantom_case
from benchmarks.detectors import Detection
from benchmarks.generator_runs import GeneratorRun, generator_run
from benchmarks.head_detector import head_run
from benchmarks.ours import GeneratorDetector
from benchmarks.phantom_track import PhantomData, held_out_data, method_summary, phantom_data
from benchmarks.results_io import RESULTS_DIR, placer_for, run_header, write_json
from benchmarks.slices import SliceSet, concatenate

__all__ = ["PercentileTestSet", "calibration_normals", "main", "percentile_test_set", "position_percentiles"]

CALIBRATION_SEEDS = tuple(range(900000, 900006))


def calibration_normals(resolution: int, window: HUWindow, placer: SlicePlacer) -> tuple[SliceSet, str]:
    """The normal slices that scores are made percentiles among (every 2nd slice of the calibration
    phantoms, in range), and the key their reconstructions are cached under."""
    normals = concatenate(
        [phantom_case(s, "normal", resolution, window, placer=placer) for s in CALIBRATION_SEEDS]
    )
    normals, _ = in_range_only(normals.subset(normals.slice_index % 2 == 0))
    return normals, f"ensemble-calibration-{CALIBRATION_SEEDS[0]}-{len(CALIBRATION_SEEDS)}-stride2"


class PercentileTestSet(NamedTuple):
    """Held-out test cases and the normals their scores are made percentiles among, as a model places them."""

    model: AnomalyModel
    placer: SlicePlacer
    data: PhantomData
    normals: SliceSet
    normal_key: str

    def fast_runs(self, model_path: Path) -> tuple[GeneratorRun, GeneratorRun]:
        """``model_path``'s fast-mode reconstructions (cached) of the calibration normals and of the test."""
        detector = GeneratorDetector("fast", model_path, InversionConfig(mode="fast"), ScoreConfig())
        test = self.data.test
        return (
            generator_run(detector, self.normals, self.normal_key),
            generator_run(detector, test, self.data.data_key),
        )


def percentile_test_set(model_path: Path, per_type: int) -> PercentileTestSet:
    """``per_type`` held-out cases of each anomaly type and as many controls (:func:`held_out_data`), and the
    calibration normals, on the grid and window of ``model_path`` and placed as it places slices."""
    model = AnomalyModel.load(model_path, "cpu")
    placer = placer_for(model, "auto")
    data = held_out_data(per_type, model.resolution, model.window, placer)
    return PercentileTestSet(
        model, placer, data, *calibration_normals(model.resolution, model.window, placer)
    )


def position_percentiles(
    normal_scores: np.ndarray,
    normal_positions: np.ndarray,
    scores: np.ndarray,
    positions: np.ndarray,
    width: float = 0.1,
    min_count: int = 20,
) -> np.ndarray:
    """Each score's share (0-1) of normal scores below it, among normal slices within ``width / 2`` of its
    position (the ``min_count`` nearest where fewer lie there)."""
    out = np.zeros(len(scores))
    for i, (score, position) in enumerate(zip(scores, positions)):
        near = np.flatnonzero(np.abs(normal_positions - position) <= width / 2)
        if near.size < min_count:
            near = np.argsort(np.abs(normal_positions - position), kind="stable")[:min_count]
        out[i] = float((normal_scores[near] < score).mean())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/default.safetensors"))
    parser.add_argument(
        "--head-model", type=Path, default=Path("benchmarks/models/cpu-mid-with-head.safetensors")
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "ensemble.json")
    args = parser.parse_args(argv)
    started = time.time()
    missing = [str(p) for p in (args.model, args.head_model) if not p.is_file()]
    if missing:
        print(f"ensemble: no model file {', '.join(missing)}", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    shipped = AnomalyModel.load(args.model, "cpu")
    placer = placer_for(shipped, "auto")
    data_args = argparse.Namespace(train_cases=6, per_type=4, normal_cases=4, stride=4, resolution=128)
    data = phantom_data(data_args, shipped.window, placer)
    normals, normal_key = calibration_normals(128, shipped.window, placer)

    ours = GeneratorDetector("ours", args.model, InversionConfig(mode="fast"), ScoreConfig())
    atlas = PositionAtlas()
    atlas.fit(data.train)
    raw = {
        "shipped fast residual": [
            generator_run(ours, s, k).method_run(ScoreConfig()).detection.slice_scores
            for s, k in ((normals, normal_key), (data.test, data.data_key))
        ],
        "head": [
            head_run("head", args.head_model, s, k).method_run().detection.slice_scores
            for s, k in ((normals, normal_key), (data.test, data.data_key))
        ],
        "atlas": [atlas.detect(normals).slice_scores, atlas.detect(data.test).slice_scores],
    }

    def row(name: str, scores: np.ndarray) -> dict[str, Any]:
        return method_summary(name, data.test, Detection(None, scores), "ensemble")

    rows, percentiles = [], {}
    for name, (normal, test) in raw.items():
        percentiles[name] = position_percentiles(normal, normals.positions, test, data.test.positions)
        rows.append(row(f"{name}, raw", test))
        rows.append(row(f"{name}, percentile by position", percentiles[name]))
    for parts in (("head", "atlas"), ("shipped fast residual", "atlas")):
        stacked = np.stack([percentiles[p] for p in parts])
        # ties at the top are broken by the other percentile
        rows.append(row(f"max({', '.join(parts)})", stacked.max(axis=0) + 1e-3 * stacked.mean(axis=0)))
        rows.append(row(f"mean({', '.join(parts)})", stacked.mean(axis=0)))
    results = {
        **run_header("ensemble", "ensemble", argv, started),
        "head_model": str(args.head_model),
        "calibration_seeds": list(CALIBRATION_SEEDS),
        "test_cases": data.split.as_dict()["test_cases"],
        "slices": len(data.test),
        "rows": rows,
    }
    write_json(results, args.out)
    print(f"[ensemble] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
