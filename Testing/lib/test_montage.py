"""flagged.png's helpers: which slices it shows, and matplotlib loaded off the scoring thread."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from AnomalyScoutLib.montage import most_anomalous

REPOSITORY = Path(__file__).resolve().parents[2]


def test_the_most_anomalous_slices_come_by_percentile_then_score():
    scores = np.array([0.5, 0.9, np.nan, 0.7, 0.8])
    percentiles = np.array([99.0, 50.0, 99.9, 99.0, np.nan])
    assert most_anomalous(scores, percentiles, 4) == [2, 3, 0, 1]


def test_preloading_imports_matplotlib_on_a_helper_thread_and_importing_the_module_does_not():
    code = (
        "import sys, threading\n"
        "from AnomalyScoutLib import montage\n"
        "assert 'matplotlib' not in sys.modules\n"
        "from AnomalyScoutLib.preload import preload_modules\n"
        "thread = preload_modules(*montage.MATPLOTLIB_MODULES)\n"
        "assert thread is not threading.current_thread()\n"
        "thread.join()\n"
        "assert {'matplotlib.figure', 'matplotlib.backends.backend_agg'} <= set(sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
