"""``anomalyscout score CT --out DIR``: residual heatmap, per-slice and per-case anomaly scores of one CT.

The options are shared with the worker (``python -m AnomalyScoutLib.worker``), which takes exactly the same
ones: :func:`add_scoring_arguments` defines them and :func:`build_scorer` turns them into a
:class:`~AnomalyScoutLib.engine.VolumeScorer`. Outputs and their atomicity: ``docs/design.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from tqdm import tqdm

from AnomalyScoutLib.allocator import keep_freed_memory
from AnomalyScoutLib.cancellation import CancelFlag, cancel_on_signals
from AnomalyScoutLib.cli import add_command_parser
from AnomalyScoutLib.devices import select_device
from AnomalyScoutLib.engine import ScoreOptions, ScoreRun, VolumeScorer, score_file
from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.inversion import MODES, InversionConfig
from AnomalyScoutLib.position.placement import PLACEMENT_METHODS
from AnomalyScoutLib.precision import check_precision
from AnomalyScoutLib.scoring import SCORE_METHODS, ScoreConfig

__all__ = [
    "TqdmListener",
    "add_device_arguments",
    "add_model_arguments",
    "add_position_argument",
    "add_scoring_arguments",
    "build_scorer",
    "device_from_args",
    "print_summary",
    "register",
    "run",
    "score_options",
]


def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``anomalyscout score`` and of the worker."""
    parser.add_argument("ct", help="CT volume: NIfTI/NRRD/MHA file, DICOM file or DICOM series folder")
    parser.add_argument(
        "--out", required=True, type=Path, help="output folder (created; existing outputs replaced)"
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--mask", default=None, help="label map on the CT's grid: score only inside it (organ)"
    )
    parser.add_argument(
        "--mask-label", type=int, default=None, help="label value in --mask (default: any > 0)"
    )
    parser.add_argument("--series-uid", default=None, help="DICOM series to read when a folder holds several")
    add_position_argument(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the projector's latent noise")
    add_device_arguments(parser)


def add_position_argument(parser: argparse.ArgumentParser) -> None:
    """``--position``: how slices are placed, the same option (and default) in ``score``, ``calibrate`` and
    ``rank`` (``AnomalyScoutLib.position.placement``)."""
    parser.add_argument(
        "--position",
        choices=PLACEMENT_METHODS,
        default="auto",
        help="how slices are placed on the model's scale: anatomy (the model's body-part regressor), index "
        "(k + 0.5) / n over the scanned range, auto: anatomy when the model has a regressor (default)",
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Model, reconstruction mode, score and flag rate: what :func:`build_scorer` reads (shared with
    ``anomalyscout review``)."""
    parser.add_argument("--model", type=Path, default=None, help="model file (default: the shipped model)")
    parser.add_argument("--mode", choices=MODES, default="fast", help="reconstruction mode (default: fast)")
    parser.add_argument(
        "--steps", type=int, default=None, help="optimisation steps (accurate: 20, projector: 1000)"
    )
    parser.add_argument(
        "--lr", type=float, default=None, help="optimisation learning rate (default per mode)"
    )
    parser.add_argument(
        "--score-method", choices=SCORE_METHODS, default="topk", help="slice score (default topk)"
    )
    parser.add_argument(
        "--fpr", type=float, default=None, help="false-positive rate of the flags (default 0.01)"
    )


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--threads``, ``--batch-size`` and ``--precision``: where and how every scoring command
    runs."""
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--batch-size", type=int, default=16, help="slices per batch (halved on GPU OOM)")
    parser.add_argument(
        "--precision",
        default="auto",
        help="auto: bf16 where the device computes it natively (CUDA; CPUs with AVX512-BF16 or AMX, in "
        "fast mode), else fp32; fp32: always (default auto)",
    )


def device_from_args(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads`` and resolve ``--device`` (see :func:`add_device_arguments`)."""
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    return select_device(args.device)


def build_scorer(args: argparse.Namespace) -> VolumeScorer:
    """Load the model on the chosen device and configure reconstruction and scores from the options.

    Raises:
        ConfigError: bad option values or an unavailable device.
        ModelFileError: the model file is missing or invalid.
    """
    from AnomalyScoutLib.model_file import DEFAULT_MODEL_PATH, AnomalyModel

    keep_freed_memory()  # every batch reuses the last one's pages (AnomalyScoutLib.allocator)
    check_precision(args.precision)  # before the model loads: a typo costs no seconds
    device = device_from_args(args)
    inversion = InversionConfig(mode=args.mode, steps=args.steps, lr=args.lr, seed=args.seed)
    score = ScoreConfig(method=args.score_method)
    model = AnomalyModel.load(args.model or DEFAULT_MODEL_PATH, device)
    return VolumeScorer(model, inversion, score, device, args.batch_size, args.precision)


def score_options(args: argparse.Namespace) -> ScoreOptions:
    return ScoreOptions(
        fpr=args.fpr,
        mask_path=args.mask,
        mask_label=args.mask_label,
        series_uid=args.series_uid,
        position=args.position,
    )


class TqdmListener:
    """Progress bar on stderr for the command line; warnings printed above it."""

    def __init__(self) -> None:
        self._bar: Any = None

    def __enter__(self) -> TqdmListener:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.close()

    def started(self, slices: int, device: str, mode: str, model_id: str) -> None:
        self._bar = tqdm(total=slices, unit="slice", desc=f"scoring ({mode}, {device})", file=sys.stderr)

    def progress(self, i: int, n: int, slice_index: int, score: float, eta_s: float | None) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def warning(self, message: str) -> None:
        tqdm.write(f"warning: {message}", file=sys.stderr)


def print_summary(run: ScoreRun, out_dir: Path) -> None:
    """The lines a person reads after a run: where the outputs are and what was found."""
    flagged = run.flagged_slices
    case = f"case score {run.case_score:.4g}"
    if run.calibrated_by_model:
        flag = ", FLAGGED" if run.calibrated.case_flagged else ""
        case += f" (percentile {run.calibrated.case_percentile:.1f}{flag})"
    print(f"outputs in {out_dir}: {', '.join(sorted(run.outputs))}")
    print(case)
    shown = ", ".join(str(k) for k in flagged[:20]) + (" ..." if len(flagged) > 20 else "")
    print(f"flagged slices ({len(flagged)} of {len(run.case.scores)}): {shown or 'none'}")


def run(args: argparse.Namespace) -> int:
    scorer = build_scorer(args)
    cancel = CancelFlag()
    with cancel_on_signals(cancel), TqdmListener() as listener:
        result = score_file(args.ct, args.out, scorer, score_options(args), listener=listener, cancel=cancel)
    print_summary(result, args.out)
    return 0


def register(subparsers: Any) -> None:
    parser = add_command_parser(
        subparsers,
        "score",
        description=__doc__.splitlines()[0],
    )
    add_scoring_arguments(parser)
    parser.set_defaults(func=run)
