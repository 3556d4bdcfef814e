"""Short spin-waits for torch's OpenMP threads in processes that score.

A scoring run keeps two helper threads busy beside torch's intra-op threads (the next batch's body mask, the
last batch's output files: :class:`AnomalyScoutLib.engine.VolumeScorer`), so on a 2-core machine the process
has more busy threads than cores. After every parallel operation, libgomp's worker threads spin-wait for the
next one (300,000 polls by default) and take the core the helpers need. libgomp shortens that wait to 1000
polls by itself when its own threads outnumber the cores, but it cannot see our helpers. Measured on 2 shared
cores: torch with 2 threads spent 5 to 43 CPU s in the networks of a 300-slice CT with the default wait, 3.8
with the short one (2.4 + 0.9 s with one thread).

:func:`limit_spin_waiting` asks for the short wait; libgomp reads it once, when torch loads it, so it must run
before ``import torch``. A value the user set (``GOMP_SPINCOUNT``, ``OMP_WAIT_POLICY``) is kept.
"""

from __future__ import annotations

import os
import sys

__all__ = ["SPIN_COUNT", "limit_spin_waiting"]

#: libgomp's own spin count for oversubscribed teams.
SPIN_COUNT = "1000"


def limit_spin_waiting() -> bool:
    """Set the short OpenMP spin-wait for this process; False where it is too late (torch is imported) or the
    user chose a wait policy."""
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)
    return os.environ["GOMP_SPINCOUNT"] == SPIN_COUNT
