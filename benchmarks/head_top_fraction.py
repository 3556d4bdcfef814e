"""How much of its map should the anomaly-map head's slice score read? Chosen on validation phantoms.

Usage: ``python -m benchmarks.head_top_fraction --model MODEL_WITH_HEAD [--write OUT]``.

A head's slice score is the mean of the top ``top_fraction`` of its map inside the body. Trained with the
default 1 %, the `cpu-mid` head's map saturates near 1 on that share of normal slices too (its calibrated
thresholds are 0.98-1.0), so a lesion cannot lift the score above them; a wider share reads more of the map.
The anomaly-map track's sweep showed that on its *test* phantoms, which must not choose anything. This picks
the fraction on :mod:`benchmarks.model_selection`'s validation phantoms (seeds 7000+), by the same rule as the
checkpoints (the mean over anomaly types of the slice AUROC), and with ``--write`` stores it in a copy of the
model file, without its calibration (the score changed: run ``anomalyscout calibrate``). Results go to
``benchmarks/results/head_top_fraction.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from AnomalyScoutLib.anomaly_map.training import set_top_fraction
from AnomalyScoutLib.model_file import AnomalyModel, stored_in_half
from benchmarks.evaluate import detection_metrics
from benchmarks.head_detector import head_run
from benchmarks.model_selection import validation_set
from benchmarks.phantom_track import sweep_summary
from benchmarks.results_io import RESULTS_DIR, add_position_argument, run_header, write_json

__all__ = ["main"]

FRACTIONS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="model file with an anomaly-map head")
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    parser.add_argument("--per-type", type=int, default=1, help="validation cases per anomaly type")
    parser.add_argument("--normal-cases", type=int, default=2, help="normal validation controls")
    parser.add_argument("--write", type=Path, help="write the model with the chosen fraction here")
    add_position_argument(parser)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "head_top_fraction.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    validation = validation_set(args.model, args.per_type, args.normal_cases, args.position)
    slices, key = validation.slices, validation.key
    run = head_run("head", args.model, slices, key)
    sweep = {}
    for fraction in args.fractions:
        metrics = detection_metrics(slices, run.method_run(fraction).detection)
        sweep[f"{fraction:g}"] = {
            **sweep_summary(metrics),
            "per_type": {t: m["slice_auroc"] for t, m in metrics.items() if t != "overall"},
        }
    chosen = max(sweep, key=lambda f: sweep[f]["mean_type_auroc"])
    trained_with = run.head.config.top_fraction
    print(f"[head-top-fraction] trained with {trained_with:g}; chosen {chosen} "
          f"(mean AUROC over types {sweep[chosen]['mean_type_auroc']:.3f})")  # fmt: skip
    if args.write is not None:
        model = AnomalyModel.load(args.model, "cpu")
        set_top_fraction(model, float(chosen))  # drops the calibration
        model.save(args.write, half=stored_in_half(args.model))
        print(f"[head-top-fraction] wrote {args.write} (not calibrated: run anomalyscout calibrate)")
    write_json(
        {
            **run_header("head_top_fraction", "head_top_fraction", argv, started),
            "model": str(args.model),
            "validation": validation.description,
            "criterion": "highest mean over anomaly types of the slice AUROC",
            "trained_with": trained_with,
            "sweep": sweep,
            "chosen": float(chosen),
        },
        args.out,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
