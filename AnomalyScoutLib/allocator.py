"""Keeping freed memory in the process: a scoring run allocates the same large buffers batch after batch.

Each batch makes tensors and arrays of 4 to 32 MiB (activations at 128², slices at 512²). By default glibc
serves blocks that large with a fresh ``mmap`` and unmaps them when freed, and trims the top of its heap,
so every batch touches brand-new pages: one page fault per 4 KiB, each one zeroing a page in the kernel.
Profiled on 2 CPU cores, that was 0.3 to 4 CPU s of system time per 300-slice CT (the more, the wider the
networks: a ``cpu-mid`` generator faulted 4000 pages per slice), for no work at all.

:func:`keep_freed_memory` tells glibc to serve every block from its heap and never to give freed memory back
while the process runs, so the second batch reuses the first batch's pages. The resident memory then stays at
the run's high-water mark instead of falling between batches; that mark, which the memory budget is about,
does not rise (the same blocks are reused). Other C libraries (macOS, Windows, musl) are left as they are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_freed_memory"]

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
#: Heap growth per ``brk`` call: fewer system calls while the first batches grow the heap.
_TOP_PAD_BYTES = 64 << 20
#: Never trim: the largest value glibc accepts (an ``int``).
_NEVER_TRIM = 2**31 - 1

_applied = False


def keep_freed_memory() -> bool:
    """Have glibc reuse freed memory instead of returning it to the system; True where it did (Linux/glibc).

    For processes that score (``anomalyscout score``, the worker), once, before the first volume. Safe to
    call again. Does nothing, and returns False, with any other C library.
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl has no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on a rejected value
    _applied = bool(
        mallopt(_M_MMAP_MAX, 0)
        and mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)
        and mallopt(_M_TOP_PAD, _TOP_PAD_BYTES)
    )
    return _applied
