"""Anomaly-map track: the learned head (issue 16) against the residual and the baselines, on the phantom
track's held-out cases.

Usage (repository root; niced, it is CPU work)::

    nice -n 15 python -m benchmarks.anomaly_map_track --head-model MODEL_WITH_HEAD \
        [--slice-head-model MODEL_WITH_SLICE_ONLY_HEAD] [--model models/default.safetensors]

Same data, same harness and same metrics as ``benchmarks.phantom_track`` (its ``--train-cases``,
``--per-type``, ``--normal-cases``, ``--stride``, ``--position`` and range gate; per anomaly type: slice,
case and pixel metrics) on its full test set. Rows:

- **head, with reconstruction**: ``--head-model``'s head on its own model's fast-mode reconstructions;
- **head, slice only**: ``--slice-head-model`` (a head trained with ``--no-reconstruction``): what the GAN's
  reconstruction adds;
- **fast-mode residual** of ``--model`` (the f-AnoGAN-style baseline, the product's score before the head);
- the **atlas** and the **autoencoder** baselines (``--anomalib`` adds GANomaly/DRAEM when installed);
- **DRAEM** with its own reconstruction network (``--draem-minutes``; :mod:`benchmarks.baselines.draem`):
  the same head and synthetic anomalies, with a reconstruction trained to undo them instead of the GAN's.

Also: the heads' slice AUROC for other top-k fractions, how the heads' normal-slice scores drift with
position (Spearman), and the head's cost next to fast mode measured in this process on the same slices.
Writes ``benchmarks/results/anomaly_map.json``; reconstructions and baselines are cached in
``benchmarks/work/`` as for the phantom track.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from AnomalyScoutLib import metrics
from AnomalyScoutLib.inversion import InversionConfig, Reconstructor
from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.scoring import ScoreConfig
from benchmarks.baselines.draem import DraemDetector
from benchmarks.evaluate import (
    MethodRun,
    case_slices,
    detection_metrics,
    method_entry,
    paired_case_bootstrap,
)
from benchmarks.generator_runs import generator_run
from benchmarks.head_detector import HeadRun, head_run
from benchmarks.ours import GeneratorDetector
from benchmarks.phantom_track import (
    FAST_NAME,
    _baseline_runs,
    add_data_arguments,
    baseline_run,
    phantom_data,
    sweep_summary,
)
from benchmarks.results_io import TrackStart, add_common_arguments, file_digest, write_json
from benchmarks.slices import SliceSet

__all__ = ["head_cost", "main", "position_drift"]

TOP_FRACTIONS = (0.001, 0.005, 0.01, 0.05, 0.2)


def position_drift(slices: SliceSet, run: MethodRun) -> dict[str, float]:
    """How much a method's normal-slice scores follow the slice position (what calibration must remove)."""
    normal = ~slices.labels
    scores = run.detection.slice_scores[normal]
    return {
        "spearman_position_vs_normal_score": metrics.spearman(slices.positions[normal], scores),
        "normal_score_p95_over_median": float(np.percentile(scores, 95) / max(np.median(scores), 1e-12)),
    }


def head_cost(model_path: Path, slices: SliceSet, repeats: int = 3, batch: int = 32) -> dict[str, float]:
    """Seconds per slice of fast-mode reconstruction and of the head on the same batch, back to back in this
    process (medians of ``repeats``), and the head's share of fast mode's time."""
    model = AnomalyModel.load(model_path, "cpu")
    reconstructor = Reconstructor(
        model.generator, model.encoder, model.discriminator, InversionConfig(mode="fast"), torch.device("cpu")
    )
    x = torch.from_numpy(slices.images[:batch])
    p = torch.from_numpy(slices.positions[:batch].astype(np.float32))
    body = torch.from_numpy(slices.body[:batch])
    fast, head = [], []
    with torch.inference_mode():
        reconstructor.reconstruct(x, p, body)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            recon = reconstructor.reconstruct(x, p, body).images
            middle = time.perf_counter()
            model.head.slice_scores(model.head.anomaly_map(x, recon, p, body), body)
            fast.append(middle - start)
            head.append(time.perf_counter() - middle)
    n = len(x)
    return {
        "slices": n,
        "threads": torch.get_num_threads(),
        "fast_s_per_slice": statistics.median(fast) / n,
        "head_s_per_slice": statistics.median(head) / n,
        "head_share_of_fast": statistics.median(h / f for h, f in zip(head, fast)),
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, "anomaly_map")
    add_data_arguments(parser)
    parser.add_argument("--head-model", type=Path, required=True, help="model file with a head (with recon)")
    parser.add_argument("--slice-head-model", type=Path, help="model file with a slice-only head")
    parser.add_argument("--anomalib", nargs="*", default=[], choices=["ganomaly", "draem"])
    parser.add_argument("--anomalib-epochs", type=int, default=2)
    parser.add_argument(
        "--draem-minutes",
        type=float,
        default=0.0,
        help="train DRAEM this long on the training cases (0: skip)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    track = TrackStart("anomaly_map", args, argv)
    split, train, test, data_key, exclusions = phantom_data(args, track.model.window, track.placer)
    track.record_gate(exclusions)
    unavailable: dict[str, str] = {}
    draem: DraemDetector | None = None
    runs: list[MethodRun] = _baseline_runs(
        args, train, test, data_key, unavailable
    )  # atlas, autoencoder, ...
    if args.draem_minutes > 0:
        print(f"[anomaly_map] DRAEM ({args.draem_minutes:g} min) ...", flush=True)
        draem = DraemDetector(minutes=args.draem_minutes, seed=args.seed)
        runs.append(baseline_run(draem, train, test, data_key))
    print("[anomaly_map] fast-mode residual ...", flush=True)
    fast = generator_run(
        GeneratorDetector(FAST_NAME, args.model, InversionConfig(mode="fast"), ScoreConfig()), test, data_key
    )
    runs.append(fast.method_run())
    heads: dict[str, HeadRun] = {}
    for name, path in (
        ("head, with reconstruction", args.head_model),
        ("head, slice only", args.slice_head_model),
    ):
        if path is not None:
            print(f"[anomaly_map] {name} ({path}) ...", flush=True)
            heads[name] = head_run(name, path, test, data_key, base=fast)
            runs.append(heads[name].method_run())
    sweeps = {
        name: {
            str(fraction): sweep_summary(detection_metrics(test, head.method_run(fraction).detection))
            for fraction in TOP_FRACTIONS
        }
        for name, head in heads.items()
    }
    results: dict[str, Any] = {
        **track.header(),
        "heads": {
            name: {
                "path": str(head.reconstructions.detector.model_path),
                "sha256_16": file_digest(head.reconstructions.detector.model_path),
                "config": head.head.config.to_dict(),
                "training": {
                    k: v
                    for k, v in head.reconstructions.detector.model.metadata["head"]["training"].items()
                    if k != "history"
                },
            }
            for name, head in heads.items()
        },
        "split": split.as_dict(),
        "scale": {"train_slices": len(train), "test_slices": len(test), "stride": args.stride},
        "unavailable": unavailable,
        "full_test": {r.name: method_entry(r, test, "full test set") for r in runs},
        # Intervals of every row and of its difference from the product's head, whole cases resampled.
        "bootstrap": paired_case_bootstrap(
            {
                r.name: case_slices(test, r.detection.slice_scores)
                for r in sorted(runs, key=lambda r: r.name != "head, with reconstruction")
            },
            {c: info.anomaly for c, info in enumerate(test.cases)},
            split.types,
        ),
        "top_fraction_sweep": sweeps,
        "position_drift": {r.name: position_drift(test, r) for r in runs},
        "head_cost": head_cost(args.head_model, test),
        # empty when DRAEM's detections came from the cache of an earlier run
        "draem_training": None if draem is None else draem.training,
    }
    write_json(results, args.out)
    print(f"[anomaly_map] wrote {args.out} in {time.time() - track.started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
