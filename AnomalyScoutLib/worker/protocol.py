"""The worker's JSON-lines protocol: one JSON object per line on stdout, told apart by its ``"event"`` key.

A GUI (the Slicer module) starts ``python -m AnomalyScoutLib.worker`` and reads its stdout line by line.
Free-text logs are fragile to parse (SlicerTotalSegmentator scrapes them), so every line the worker means
for its reader is one of the small frozen messages below, and the reader uses :func:`parse_event`, which
skips anything else: library warnings end up on the same pipe when stderr is merged into stdout. The message
fields are the contract in ``docs/design.md``; the exit codes are documented in ``docs/worker-protocol.md``.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import asdict, dataclass, field
from typing import IO, Any, Union

__all__ = [
    "EVENT_TYPES",
    "Done",
    "ErrorEvent",
    "Event",
    "EventWriter",
    "Progress",
    "Started",
    "WarningEvent",
    "parse_event",
]


def _finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN/inf; a score that could not be computed travels as ``null``."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True)
class Started:
    """Sent once the input is read and the model loaded: the reader can size its progress bar."""

    slices: int
    device: str
    mode: str
    model_id: str
    event: str = field(default="started", init=False)


@dataclass(frozen=True)
class Progress:
    """Sent after each slice is scored; ``i`` counts from 1 to ``n``; ``eta_s`` is the estimated seconds
    left."""

    i: int
    n: int
    slice_index: int
    score: float | None
    eta_s: float | None
    event: str = field(default="progress", init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "score", _finite_or_none(self.score))
        object.__setattr__(
            self, "eta_s", None if self.eta_s is None else _finite_or_none(round(self.eta_s, 2))
        )


@dataclass(frozen=True)
class WarningEvent:
    """Something the user should know that does not stop the run (e.g. the model has no calibration)."""

    message: str
    event: str = field(default="warning", init=False)


@dataclass(frozen=True)
class Done:
    """The last line of a successful run; the outputs named here exist and are complete."""

    outputs: dict[str, str]
    case_score: float | None
    flagged_slices: list[int]
    event: str = field(default="done", init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "case_score", _finite_or_none(self.case_score))


@dataclass(frozen=True)
class ErrorEvent:
    """The last line of a failed or cancelled run; ``kind`` is the error class (``"CancelledError"``, ...)."""

    message: str
    kind: str
    event: str = field(default="error", init=False)


Event = Union[Started, Progress, WarningEvent, Done, ErrorEvent]

#: The ``"event"`` values a reader can meet.
EVENT_TYPES: tuple[str, ...] = ("started", "progress", "warning", "done", "error")


class EventWriter:
    """Writes events as single JSON lines and flushes each one, so the reader sees progress as it happens.

    A lock keeps lines whole if a signal handler or a second thread writes while the main thread does.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        line = json.dumps(asdict(event), allow_nan=False, separators=(", ", ": "))
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


def parse_event(line: str) -> dict[str, Any] | None:
    """Return the message on ``line``, or ``None`` if the line is not a protocol message (log noise, blank).

    Readers must ignore such lines rather than fail: stderr may be merged into stdout.
    """
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        message = json.loads(text)
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get("event") not in EVENT_TYPES:
        return None
    return message
