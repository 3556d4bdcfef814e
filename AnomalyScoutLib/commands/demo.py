"""``anomalyscout demo [--out DIR]``: score a synthetic case with known anomalies and say how well it went.

Needs nothing but the installed library and the shipped model: it makes a seeded phantom CT with a liver
tumour, a metal clip and a bright blob (:mod:`AnomalyScoutLib.phantom`), writes it to ``DIR/phantom_ct.nrrd``
(with the true anomaly mask in ``DIR/phantom_truth.nrrd``), scores it like ``anomalyscout score`` and prints
where the outputs are and how the flags match the truth: slice-level sensitivity, specificity and the AUROC of
the slice scores divided by their position's flag threshold. ``DIR/demo_report.json`` keeps those numbers.
Offline, CPU, 128x128x48 voxels so that it finishes well within a minute.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from AnomalyScoutLib.atomic import write_bytes_atomic
from AnomalyScoutLib.cancellation import CancelFlag, cancel_on_signals
from AnomalyScoutLib.cli import add_command_parser
from AnomalyScoutLib.commands.score import TqdmListener, add_device_arguments, device_from_args, print_summary
from AnomalyScoutLib.engine import ScoreRun, VolumeScorer, score_file
from AnomalyScoutLib.errors import MetricError
from AnomalyScoutLib.inversion import MODES, InversionConfig
from AnomalyScoutLib.io.volume import write_volume
from AnomalyScoutLib.metrics import roc_auc
from AnomalyScoutLib.scoring import ScoreConfig

__all__ = ["DEMO_ANOMALIES", "DEMO_SHAPE_XYZ", "register", "run", "slice_agreement"]

DEMO_SHAPE_XYZ = (128, 128, 48)
DEMO_ANOMALIES = ("tumour", "metal", "blob")
DEMO_SEED = 7


def slice_agreement(truth: np.ndarray, flagged: np.ndarray, scores: np.ndarray) -> dict[str, float | int]:
    """Slice-level agreement of flags and scores with the true anomalous slices (NaN where undefined)."""
    truth, flagged = np.asarray(truth, dtype=bool), np.asarray(flagged, dtype=bool)
    positives, negatives = int(truth.sum()), int((~truth).sum())
    try:
        auroc = float(roc_auc(truth, np.asarray(scores, dtype=np.float64)))
    except MetricError:
        auroc = math.nan
    return {
        "anomalous_slices": positives,
        "normal_slices": negatives,
        "true_positives": int((truth & flagged).sum()),
        "false_positives": int((~truth & flagged).sum()),
        "sensitivity": (truth & flagged).sum() / positives if positives else math.nan,
        "specificity": (~truth & ~flagged).sum() / negatives if negatives else math.nan,
        "auroc": auroc,
    }


def _write_report(path: Path, report: dict[str, Any]) -> None:
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in report.items()}
    write_bytes_atomic(path, json.dumps(clean).encode("utf-8"))


def run(args: argparse.Namespace) -> int:
    from AnomalyScoutLib.model_file import DEFAULT_MODEL_PATH, AnomalyModel
    from AnomalyScoutLib.phantom import make_phantom

    out = Path(args.out).absolute()
    device = device_from_args(args)
    model = AnomalyModel.load(args.model or DEFAULT_MODEL_PATH, device)
    scorer = VolumeScorer(
        model, InversionConfig(mode=args.mode), ScoreConfig(), device, args.batch_size, args.precision
    )
    shape = "x".join(map(str, DEMO_SHAPE_XYZ))
    print(f"making a {shape} phantom with {', '.join(DEMO_ANOMALIES)} (seed {args.seed})")
    case = make_phantom(args.seed, shape_xyz=DEMO_SHAPE_XYZ, anomalies=DEMO_ANOMALIES)
    out.mkdir(parents=True, exist_ok=True)
    write_volume(case.volume, out / "phantom_ct.nrrd")
    truth_volume = dataclasses.replace(case.volume, array_zyx=case.anomaly_mask.astype(np.float32))
    write_volume(truth_volume, out / "phantom_truth.nrrd")
    cancel = CancelFlag()
    with cancel_on_signals(cancel), TqdmListener() as listener:
        result: ScoreRun = score_file(out / "phantom_ct.nrrd", out, scorer, listener=listener, cancel=cancel)
    print_summary(result, out)
    # The phantom is made in canonical order: slice k of the truth is scored slice k.
    truth = case.slice_labels
    # Ranked by score over its position's threshold (the riskiest opinion's): raw scores vary with the region.
    ranking = result.calibrated.exceedance
    agreement = slice_agreement(truth, result.calibrated.flagged, ranking)
    true_slices = [int(k) for k in np.flatnonzero(truth)]
    inserted = ", ".join(f"{a.kind} {list(a.slices)}" for a in case.anomalies)
    print(f"true anomalous slices: {true_slices} ({inserted})")
    print(
        f"slice-level agreement: sensitivity {agreement['sensitivity']:.2f} "
        f"({agreement['true_positives']}/{agreement['anomalous_slices']}), "
        f"specificity {agreement['specificity']:.2f} ({agreement['false_positives']} false flags), "
        f"AUROC of slice scores (relative to their position's threshold) {agreement['auroc']:.3f}"
    )
    if not result.calibrated_by_model:
        print("note: the model has no calibration for this mode; flags are relative to this case alone")
    report = {
        "seed": args.seed,
        "shape_xyz": list(DEMO_SHAPE_XYZ),
        "mode": args.mode,
        "model_id": model.model_id,
        "calibrated": result.calibrated_by_model,
        "true_slices": true_slices,
        "flagged_slices": result.flagged_slices,
        **agreement,
        "seconds": sum(result.timings.values()),
    }
    _write_report(out / "demo_report.json", report)
    print(f"see {out / 'flagged.png'}; in Slicer, load phantom_ct.nrrd with residual.nrrd as the overlay")
    sys.stdout.flush()
    return 0


def register(subparsers: Any) -> None:
    parser = add_command_parser(
        subparsers,
        "demo",
        description=__doc__,
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--out", type=Path, default=Path("anomalyscout-demo"), help="output folder (anomalyscout-demo)"
    )
    parser.add_argument("--model", type=Path, default=None, help="model file (default: the shipped model)")
    parser.add_argument("--mode", choices=MODES, default="fast", help="reconstruction mode (default: fast)")
    parser.add_argument("--seed", type=int, default=DEMO_SEED, help=f"phantom seed (default {DEMO_SEED})")
    add_device_arguments(parser)
    parser.set_defaults(func=run)
