"""``anomalyscout review CT --segmentation SEG --out DIR``: the slices where a segmentation is most at risk.

SEG is a label map from any model on the CT's exact grid; the CT is scored in and around the segmented organ
and each slice gets a risk (its score over the calibrated threshold at its position, the largest over the
model's opinions; > 1 flagged). What is
written and why: :mod:`AnomalyScoutLib.segmentation.review`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from AnomalyScoutLib.cancellation import CancelFlag, cancel_on_signals
from AnomalyScoutLib.cli import add_command_parser
from AnomalyScoutLib.commands.score import (
    TqdmListener,
    add_device_arguments,
    add_model_arguments,
    build_scorer,
)
from AnomalyScoutLib.engine import RunListener, VolumeScorer
from AnomalyScoutLib.segmentation.review import SegmentationReview, review_segmentation

__all__ = ["add_review_arguments", "register", "review_from_args", "run"]


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ct", help="CT volume: NIfTI/NRRD/MHA file, DICOM file or DICOM series folder")
    parser.add_argument(
        "--segmentation", required=True, help="label map of the organ on the CT's grid (from any model)"
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="output folder (created; existing outputs replaced)"
    )
    add_review_arguments(parser)
    add_model_arguments(parser)
    parser.add_argument("--series-uid", default=None, help="DICOM series to read when a folder holds several")
    parser.add_argument("--seed", type=int, default=0, help="seed of the projector's latent noise")
    add_device_arguments(parser)


def add_review_arguments(parser: argparse.ArgumentParser) -> None:
    """``--label`` and ``--margin-mm``: what a review takes besides the CT and the segmentation (shared with
    the worker's review job)."""
    parser.add_argument(
        "--label", type=int, default=None, help="organ label in the segmentation (default: > 0)"
    )
    parser.add_argument(
        "--margin-mm", type=float, default=10.0, help="score this far around the organ too (default 10)"
    )


def review_from_args(
    args: argparse.Namespace, scorer: VolumeScorer, listener: RunListener, cancel: CancelFlag
) -> SegmentationReview:
    """The review the options ask for (``args.segmentation``, :func:`add_review_arguments`, ``--fpr``,
    ``--series-uid``): one call for the command and the worker."""
    return review_segmentation(
        args.ct,
        args.segmentation,
        args.out,
        scorer,
        label=args.label,
        margin_mm=args.margin_mm,
        fpr=args.fpr,
        series_uid=args.series_uid,
        listener=listener,
        cancel=cancel,
    )


def run(args: argparse.Namespace) -> int:
    scorer = build_scorer(args)
    cancel = CancelFlag()
    with cancel_on_signals(cancel), TqdmListener() as listener:
        review = review_from_args(args, scorer, listener, cancel)
    risky = review.risky_slices
    shown = ", ".join(str(k) for k in risky[:20]) + (" ..." if len(risky) > 20 else "")
    print(f"outputs in {args.out}: review.csv, review.png (and the score outputs)")
    print(f"slices at risk ({len(risky)} of {len(review.risk)}), riskiest first: {shown or 'none'}")
    return 0


def register(subparsers: Any) -> None:
    parser = add_command_parser(subparsers, "review", description=__doc__.splitlines()[0])
    _add_arguments(parser)
    parser.set_defaults(func=run)
