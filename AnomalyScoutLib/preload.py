"""Importing modules on a helper thread while the main thread reads the CT.

A scoring run needs a few heavy modules only after its input is read: ``scipy.optimize`` for placing the
slices by anatomy (about 0.3 CPU s to import), matplotlib for the montage (about half a second). Reading the
CT leaves the second core idle (SimpleITK reads without holding the GIL), so :func:`preload_modules` imports
them there, and they are ready when they are needed.

Python's import system makes this safe: a thread that imports a module another thread is still importing
waits for it to finish, so a caller may also import the same modules itself at any time. A module that fails
to import is left for the code that needs it to report.
"""

from __future__ import annotations

import contextlib
import importlib
import threading

__all__ = ["preload_modules"]


def preload_modules(*names: str) -> threading.Thread:
    """Import ``names`` in that order on a daemon thread, and return the (started) thread."""

    def load() -> None:
        for name in names:
            with contextlib.suppress(ImportError):
                importlib.import_module(name)

    thread = threading.Thread(target=load, name="anomalyscout-preload", daemon=True)
    thread.start()
    return thread
