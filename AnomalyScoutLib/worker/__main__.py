"""``python -m AnomalyScoutLib.worker CT --out DIR [options]``: score one CT, report in JSON lines on stdout.

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
from typing import NoReturn

from AnomalyScoutLib.cancellation import CancelFlag, cancel_on_signals
from AnomalyScoutLib.commands.score import add_scoring_arguments, build_scorer, score_options
from AnomalyScoutLib.engine import score_file
from AnomalyScoutLib.errors import AnomalyScoutError
from AnomalyScoutLib.worker.protocol import Done, ErrorEvent, EventWriter, Progress, Started, WarningEvent

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


def main(argv: Sequence[str] | None = None, stdout=None) -> int:
    """Run the worker; returns the exit code (the ``__main__`` guard passes it to :func:`sys.exit`)."""
    writer = EventWriter(stdout or sys.stdout)
    parser = _Parser(prog="python -m AnomalyScoutLib.worker", description=__doc__.splitlines()[0])
    add_scoring_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except _UsageError as error:
        writer.emit(ErrorEvent(message=f"usage: {error}", kind="UsageError"))
        return EXIT_USAGE
    cancel = CancelFlag()
    with cancel_on_signals(cancel):
        try:
            scorer = build_scorer(args)
            cancel.raise_if_set()
            result = score_file(
                args.ct,
                args.out,
                scorer,
                score_options(args),
                listener=JsonLinesListener(writer),
                cancel=cancel,
            )
        except AnomalyScoutError as error:
            writer.emit(ErrorEvent(message=str(error), kind=type(error).__name__))
            return error.exit_code
        except Exception as error:  # noqa: BLE001 - a bug: report it as a message, keep the traceback on stderr
            traceback.print_exc()
            writer.emit(
                ErrorEvent(message=f"internal error (a bug in AnomalyScout): {error!r}", kind="InternalError")
            )
            return EXIT_INTERNAL_ERROR
    outputs = {name: str(path) for name, path in result.outputs.items()}
    writer.emit(Done(outputs=outputs, case_score=result.case_score, flagged_slices=result.flagged_slices))
    return 0


if __name__ == "__main__":
    sys.exit(main())
