"""Segmentation-failure track: does the anomaly score predict where a liver segmenter fails?

Usage (repository root, niced)::

    nice -n 15 python -m benchmarks.segfail_track [--model models/default.safetensors]

The poster's motivation: a segmentation network trained on normal anatomy fails on unusual slices, and the
anomaly score should say where. Set-up:

- the project's small 2-D U-Net (:mod:`AnomalyScoutLib.segmentation`) is trained on the liver labels of the
  phantom track's normal training slices (``--unet-steps`` steps of ``--unet-batch`` slices, seeded);
- it segments the phantom track's test slices (anomalous cases and controls, the same slices and cache as
  ``benchmarks.phantom_track``); per slice, Dice of the thresholded prediction (0.5) against the true liver;
- only slices where the true liver covers at least ``--min-liver-px`` model pixels are scored (Dice on a few
  pixels of liver tip is noise, not failure);
- scores: our ``fast`` mode over the whole body, and restricted to the U-Net's own liver mask dilated by
  ``--dilate-px`` pixels (the engine's ``--mask`` with the segmentation it is asked to judge); the atlas and
  autoencoder whole-slice scores for comparison;
- measures: Spearman correlation of score and 1 − Dice, and AUROC / AP for detecting slices with
  Dice < ``--failure-dice`` (0.9 by default).

Writes ``benchmarks/results/segfail.json`` and ``docs/benchmarks/segfail_scatter.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from AnomalyScoutLib import metrics
from AnomalyScoutLib.inversion import InversionConfig
from AnomalyScoutLib.scoring import ScoreConfig
from AnomalyScoutLib.segmentation import UNet, predict_probabilities, train_segmenter
from benchmarks import plots
from benchmarks.baselines.atlas import PositionAtlas
from benchmarks.baselines.autoencoder import AutoencoderDetector
from benchmarks.data import WORK_DIR
from benchmarks.generator_runs import generator_run
from benchmarks.ours import GeneratorDetector
from benchmarks.phantom_track import FAST_NAME, add_data_arguments, baseline_run, phantom_data
from benchmarks.results_io import TrackStart, add_common_arguments, write_json
from benchmarks.slices import SliceSet

__all__ = ["failure_metrics", "liver_predictions", "main", "slice_dice"]


def liver_predictions(
    train: SliceSet, test: SliceSet, steps: int, batch_size: int, seed: int, data_key: str
) -> np.ndarray:
    """Liver probability per test pixel from a U-Net trained on the training slices (cached by settings)."""
    key = hashlib.sha256(json.dumps([data_key, steps, batch_size, seed, len(train)]).encode()).hexdigest()[
        :16
    ]
    path = WORK_DIR / "segfail" / f"unet-probabilities-{key}.npy"
    if path.is_file():
        return np.load(path)
    torch.manual_seed(seed)
    model = UNet()
    train_segmenter(
        model, train.images, train.organ.astype(np.float32), steps=steps, batch_size=batch_size, seed=seed
    )
    probabilities = predict_probabilities(model, test.images).astype(np.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, probabilities)
    tmp.replace(path)
    return probabilities


def slice_dice(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-slice Dice of boolean ``(n, h, w)`` masks (``metrics.dice``: 1.0 when both are empty)."""
    return np.array([metrics.dice(p, t) for p, t in zip(prediction, truth)])


def failure_metrics(scores: np.ndarray, dice: np.ndarray, failure_dice: float) -> dict[str, Any]:
    """Spearman(score, 1 − Dice) and AUROC / AP of the score for slices with Dice below ``failure_dice``."""
    failed = dice < failure_dice
    both = 0 < failed.sum() < failed.size
    return {
        "spearman_vs_1_minus_dice": metrics.spearman(scores, 1.0 - dice),
        "failure_auroc": metrics.roc_auc(failed, scores) if both else None,
        "failure_ap": metrics.average_precision(failed, scores) if both else None,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, "segfail")
    add_data_arguments(parser)
    parser.add_argument("--unet-steps", type=int, default=250)
    parser.add_argument("--unet-batch", type=int, default=4, help="U-Net batch (2.4 CPU-s per step at 16)")
    parser.add_argument("--min-liver-px", type=int, default=50)
    parser.add_argument("--dilate-px", type=int, default=4)
    parser.add_argument("--failure-dice", type=float, default=0.9)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    track = TrackStart("segfail", args, argv)
    model = track.model
    split, train, test, data_key = phantom_data(args, model.window)
    print(f"[segfail] U-Net ({args.unet_steps} steps) on {len(train)} normal slices ...", flush=True)
    predicted = liver_predictions(train, test, args.unet_steps, args.unet_batch, args.seed, data_key) > 0.5
    dice = slice_dice(predicted, test.organ)
    scored = test.organ.reshape(len(test), -1).sum(axis=1) >= args.min_liver_px
    region = np.stack(
        [ndimage.binary_dilation(p, iterations=args.dilate_px) if p.any() else p for p in predicted]
    )

    fast = generator_run(
        GeneratorDetector(FAST_NAME, args.model, InversionConfig(mode="fast"), ScoreConfig()), test, data_key
    )
    scores = {
        "ours fast, whole slice": fast.method_run().detection.slice_scores,
        "ours fast, U-Net liver mask": fast.method_run(region=region).detection.slice_scores,
    }
    calibrated = fast.calibrated_run()
    if calibrated is not None:
        scores["ours fast, whole slice, calibrated"] = calibrated.detection.slice_scores
    for detector in (PositionAtlas(), AutoencoderDetector(steps=args.ae_steps, seed=args.seed)):
        scores[f"{detector.name}, whole slice"] = baseline_run(
            detector, train, test, data_key
        ).detection.slice_scores

    anomalous_case = test.case_anomaly != "normal"
    groups = {"all liver slices": scored, "liver slices of anomalous cases": scored & anomalous_case}
    results: dict[str, Any] = {
        **track.header(),
        "split": split.as_dict(),
        "settings": {
            "unet_steps": args.unet_steps,
            "unet_batch": args.unet_batch,
            "min_liver_px": args.min_liver_px,
            "dilate_px": args.dilate_px,
            "failure_dice": args.failure_dice,
            "stride": args.stride,
            "resolution": args.resolution,
        },
        "slices_scored": int(scored.sum()),
        "dice": {
            name: {
                "mean": float(dice[keep].mean()),
                "failures": int((dice[keep] < args.failure_dice).sum()),
                "slices": int(keep.sum()),
            }
            for name, keep in groups.items()
        },
        "dice_by_type": {
            kind: float(dice[scored & (test.case_anomaly == kind)].mean())
            for kind in sorted(set(test.case_anomaly))
            if (scored & (test.case_anomaly == kind)).any()
        },
        "scores": {
            name: {
                group: failure_metrics(s[keep], dice[keep], args.failure_dice)
                for group, keep in groups.items()
            }
            for name, s in scores.items()
        },
    }
    write_json(results, args.out)
    plots.plot_scatter(
        {name: (s[scored], 1.0 - dice[scored]) for name, s in scores.items() if name.startswith("ours")},
        test.labels[scored],
        args.plots / "segfail_scatter.png",
        f"Anomaly score vs segmentation failure ({int(scored.sum())} liver slices)",
    )
    print(f"[segfail] wrote {args.out} in {time.time() - track.started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
