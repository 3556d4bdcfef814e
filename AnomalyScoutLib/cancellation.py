"""Cooperative cancellation of a long scoring run.

Signal handlers may only do very little safely, and a torch operation cannot be interrupted half-way, so
SIGTERM/SIGINT only *set* a flag; the scoring loop and the latent-refinement loops check it between batches
and between optimisation steps (each a fraction of a second) and then raise :class:`CancelledError`, which
unwinds through the atomic output writer and leaves nothing behind.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType

from AnomalyScoutLib.errors import CancelledError

__all__ = ["CancelFlag", "cancel_on_signals"]


class CancelFlag:
    """A thread- and signal-safe "please stop" flag."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = "cancelled"

    def set(self, reason: str = "cancelled") -> None:
        self.reason = reason
        self._event.set()

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    def raise_if_set(self) -> None:
        """Raise :class:`CancelledError` if cancellation was requested; called at every safe stopping
        point."""
        if self._event.is_set():
            raise CancelledError(f"{self.reason}; nothing was written")


@contextmanager
def cancel_on_signals(
    flag: CancelFlag, signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT)
) -> Iterator[CancelFlag]:
    """Within the block, the given signals set ``flag`` instead of killing the process.

    The old handlers come back after the block.

    Only the main thread may install handlers; elsewhere (a test runner's thread) the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        flag.set(f"cancelled by {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
