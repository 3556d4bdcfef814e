"""Anomaly-map heads compared on a larger test set, each calibrated per position: which head is better, and
can the test cases tell?

Usage (repository root; minutes once the phantom and reconstruction caches exist)::

    nice -n 10 python -m benchmarks.head_comparison --heads default=models/default.safetensors \\
        other=runs/other-head.safetensors [early=runs/head.safetensors:RUN/snapshots/step-000500.safetensors]

Four cases per type could not tell heads apart (``docs/benchmarks.md``, section 6: 95 % intervals 0.1 wide),
and the product track costs 14 s per case and model. Each head reads its own model's ``fast`` reconstructions
(cached; shared with ``--base`` when the generator and encoder are the same, so such a head costs only its
own forward passes), and the test can be large: ``--per-type`` held-out phantoms per anomaly type and as
many controls (seeds 9000+, every 4th slice, placed by anatomy). Each head's slice score becomes a percentile
among normal slices near the same position (6 normal phantoms, seeds 900000+: what the product's calibration
does), and whole cases are resampled for 95 % intervals of each head's mean slice AUROC over types and of its
difference from the first head. Results: ``benchmarks/results/head_comparison.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from AnomalyScoutLib.anomaly_map.head import AnomalyHead
from AnomalyScoutLib.inversion import InversionConfig
from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.scoring import ScoreConfig
from benchmarks.detectors import Detection
from benchmarks.ensemble import CALIBRATION_SEEDS, percentile_test_set, position_percentiles
from benchmarks.evaluate import case_slices, paired_case_bootstrap
from benchmarks.generator_runs import GeneratorRun
from benchmarks.head_detector import HeadRun, head_run
from benchmarks.head_selection import load_snapshot
from benchmarks.ours import GeneratorDetector
from benchmarks.phantom_track import method_summary
from benchmarks.results_io import RESULTS_DIR, run_header, write_json

__all__ = ["HeadSpec", "main"]


class HeadSpec:
    """``NAME=MODEL`` (the model file's head) or ``NAME=MODEL:SNAPSHOT`` (a ``train-head --snapshots`` file
    read into that model's head)."""

    def __init__(self, text: str) -> None:
        name, _, rest = text.partition("=")
        model, _, snapshot = rest.partition(":")
        if not name or not model:
            raise argparse.ArgumentTypeError(f"a head is NAME=MODEL[:SNAPSHOT], got {text!r}")
        self.name, self.model, self.snapshot = name, Path(model), Path(snapshot) if snapshot else None

    def paths(self) -> list[Path]:
        return [self.model] + ([self.snapshot] if self.snapshot else [])

    def load(self, model: AnomalyModel | None = None) -> AnomalyHead:
        """The head: ``model``'s (the file, loaded when not given), or the snapshot read into it."""
        model = model or AnomalyModel.load(self.model, "cpu")
        if self.snapshot is not None:
            return load_snapshot(self.snapshot, model)[0]
        if model.head is None:
            raise ValueError(f"{self.model} holds no anomaly-map head")
        return model.head


def _percentiles(
    spec: HeadSpec, normals: GeneratorRun, test: GeneratorRun, keys: tuple[str, str]
) -> np.ndarray:
    """The head's test slice scores as percentiles among the normal slices near each one's position, on its
    own model's reconstructions (the base's when the generator and encoder are the same)."""
    detector = GeneratorDetector(spec.name, spec.model, InversionConfig(mode="fast"), ScoreConfig())
    head = spec.load(detector.model)  # the file is read once, for the head and both slice sets
    scores = []
    for base, key in zip((normals, test), keys):
        own = head_run(spec.name, spec.model, base.slices, key, base=base, detector=detector).reconstructions
        scores.append(HeadRun(spec.name, own, head=head).method_run().detection.slice_scores)
    return position_percentiles(scores[0], normals.slices.positions, scores[1], test.slices.positions)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=HeadSpec, nargs="+", required=True, help="NAME=MODEL[:SNAPSHOT]")
    parser.add_argument(
        "--base",
        type=Path,
        default=Path("models/default.safetensors"),
        help="model whose grid, window and placement make the test slices",
    )
    # 20: two draws of 10 per type differed by 0.08 over types (docs/benchmarks.md section 12)
    parser.add_argument("--per-type", type=int, default=20, help="test cases per anomaly type (and controls)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "head_comparison.json")
    args = parser.parse_args(argv)
    started = time.time()
    missing = [str(p) for p in (args.base, *(p for h in args.heads for p in h.paths())) if not p.is_file()]
    if missing:
        print(f"head_comparison: no file {', '.join(missing)}", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    test_set = percentile_test_set(args.base, args.per_type)
    data, normal_key = test_set.data, test_set.normal_key
    normal_run, test_run = test_set.fast_runs(args.base)
    percentiles: dict[str, np.ndarray] = {}
    rows: list[dict[str, Any]] = []
    for spec in args.heads:
        percentiles[spec.name] = _percentiles(spec, normal_run, test_run, (normal_key, data.data_key))
        rows.append(
            {
                **method_summary(
                    spec.name, data.test, Detection(None, percentiles[spec.name]), "head_comparison"
                ),
                "model": str(spec.model),
                "snapshot": None if spec.snapshot is None else str(spec.snapshot),
            }
        )
    test = data.test
    bootstrap = paired_case_bootstrap(
        {name: case_slices(test, p) for name, p in percentiles.items()},
        {c: info.anomaly for c, info in enumerate(test.cases)},
        data.split.types,
    )
    for name, interval in bootstrap["difference_from_first_ci95"].items():
        print(
            f"[head_comparison] {name} minus {args.heads[0].name}: {interval[0]:+.3f} to {interval[1]:+.3f}"
        )
    write_json(
        {
            **run_header("head_comparison", "head_comparison", argv, started),
            "base": str(args.base),
            "score": "each head's slice score as a percentile among normal slices near its position",
            "calibration_seeds": list(CALIBRATION_SEEDS),
            "test_cases": len(test.cases),
            "test_slices": len(test),
            "rows": rows,
            "bootstrap": bootstrap,
        },
        args.out,
    )
    print(f"[head_comparison] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
