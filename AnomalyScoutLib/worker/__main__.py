"""``python -m AnomalyScoutLib.worker CT --out DIR [options]``: score one CT, report in JSON lines on stdout.

Two jobs: scoring (the options and outputs of ``anomalyscout score``) and, with ``--review SEG``, reviewing a
segmentation (the outputs of ``anomalyscout review``: ``review.csv``, ``review.png`` and the score outputs of
the region scored). Both report the same messages, so one reader serves both.

Every outcome ends with exactly one ``done`` or ``error`` line and the exit code of
``docs/worker-protocol.md`` (0 done, 1 invalid input, 2 usage, 3 internal error, 130 cancelled). SIGTERM and
SIGINT only set a flag that the scoring loop checks between batches and optimisation steps, so a cancel takes
effect within a second or two and unwinds through the atomic output folder, leaving ``--out`` as it was. No
progress bars: the reader parses stdout. Needs nothing beyond the library, so it runs under plain Python and
under Slicer's ``PythonSlicer``.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from AnomalyScoutLib.omp_threads import limit_spin_waiting

limit_spin_waiting()  # before the imports below load torch (AnomalyScoutLib.omp_threads)

from AnomalyScoutLib.cancellation import CancelFlag, cancel_on_signals  # noqa: E402
from AnomalyScoutLib.commands.review import add_review_arguments, review_from_args  # noqa: E402
from AnomalyScoutLib.commands.score import add_scoring_arguments, build_scorer, score_options  # noqa: E402
from AnomalyScoutLib.engine import score_file  # noqa: E402
from AnomalyScoutLib.errors import AnomalyScoutError  # noqa: E402
from AnomalyScoutLib.worker.protocol import (  # noqa: E402
    Done,
    ErrorEvent,
    EventWriter,
    Progress,
    Started,
    WarningEvent,
)

__all__ = ["EXIT_INTERNAL_ERROR", "EXIT_USAGE", "JsonLinesListener", "main"]

EXIT_USAGE = 2
EXIT_INTERNAL_ERROR = 3


class JsonLinesListener:
    """Turns the engine's run events into protocol messages."""

    def __init__(self, writer: EventWriter) -> None:
        self._writer = writer

    def started(self, slices: int, device: str, mode: str, model_id: str) -> None:
        self._writer.emit(Started(slices=slices, device=device, mode=mode, model_id=model_id))

    def progress(self, i: int, n: int, slice_index: int, score: float, eta_s: float | None) -> None:
        self._writer.emit(Progress(i=i, n=n, slice_index=slice_index, score=score, eta_s=eta_s))

    def warning(self, message: str) -> None:
        self._writer.emit(WarningEvent(message=message))


class _UsageError(Exception):
    """argparse's complaint, raised instead of its exit so that it becomes an ``error`` line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The options of ``anomalyscout score``, plus ``--review SEG`` and ``anomalyscout review``'s own ones
    (``--label``, ``--margin-mm``) for the review job."""
    parser = _Parser(prog="python -m AnomalyScoutLib.worker", description=__doc__.splitlines()[0])
    add_scoring_arguments(parser)
    parser.add_argument(
        "--review",
        dest="segmentation",
        type=Path,
        default=None,
        metavar="SEG",
        help="review this segmentation (a label map on the CT's grid) instead of scoring the whole CT",
    )
    add_review_arguments(parser)
    args = parser.parse_args(argv)
    if args.segmentation is None and args.label is not None:
        parser.error("--label names the organ of --review SEG; to score inside a mask use --mask-label")
    scoring_only = {"--mask": args.mask, "--mask-label": args.mask_label, "--position": args.position}
    given = [name for name, value in scoring_only.items() if value not in (None, "auto")]
    if args.segmentation is not None and given:
        parser.error(f"--review scores its own region around the segmentation: leave out {', '.join(given)}")
    return args


def _run_job(args: argparse.Namespace, writer: EventWriter, cancel: CancelFlag) -> Done:
    """Score, or review with ``--review``; the ``done`` message names the outputs and the flagged slices
    (for a review: the slices at risk, riskiest first)."""
    scorer = build_scorer(args)
    cancel.raise_if_set()
    listener = JsonLinesListener(writer)
    if args.segmentation is None:
        result = score_file(args.ct, args.out, scorer, score_options(args), listener=listener, cancel=cancel)
        outputs, case_score, flagged = result.outputs, result.case_score, result.flagged_slices
    else:
        review = review_from_args(args, scorer, listener, cancel)
        outputs, case_score, flagged = review.outputs, review.score_run.case_score, review.risky_slices
    paths = {name: str(path) for name, path in outputs.items()}
    return Done(outputs=paths, case_score=case_score, flagged_slices=list(flagged))


def main(argv: Sequence[str] | None = None, stdout=None) -> int:
    """Run the worker; returns the exit code (the ``__main__`` guard passes it to :func:`sys.exit`)."""
    writer = EventWriter(stdout or sys.stdout)
    try:
        args = _parse(argv)
    except _UsageError as error:
        writer.emit(ErrorEvent(message=f"usage: {error}", kind="UsageError"))
        return EXIT_USAGE
    cancel = CancelFlag()
    with cancel_on_signals(cancel):
        try:
            done = _run_job(args, writer, cancel)
        except AnomalyScoutError as error:
            writer.emit(ErrorEvent(message=str(error), kind=type(error).__name__))
            return error.exit_code
        except Exception as error:  # noqa: BLE001 - a bug: report it as a message, keep the traceback on stderr
            traceback.print_exc()
            writer.emit(
                ErrorEvent(message=f"internal error (a bug in AnomalyScout): {error!r}", kind="InternalError")
            )
            return EXIT_INTERNAL_ERROR
    writer.emit(done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
