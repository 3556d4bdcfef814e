"""preload_modules: heavy imports on a helper thread, in order, without failing on a missing module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True)


def test_the_modules_are_imported_on_a_helper_thread_and_a_missing_one_is_skipped():
    done = _run(
        "import sys, threading\n"
        "from AnomalyScoutLib.preload import preload_modules\n"
        "assert 'scipy.optimize' not in sys.modules and 'json.tool' not in sys.modules\n"
        "thread = preload_modules('no_such_module_anywhere', 'scipy.optimize', 'json.tool')\n"
        "assert thread is not threading.current_thread() and thread.daemon\n"
        "thread.join()\n"
        "assert {'scipy.optimize', 'json.tool'} <= set(sys.modules)\n"
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_main_thread_may_import_a_module_the_helper_is_still_importing():
    done = _run(
        "import sys\n"
        "from AnomalyScoutLib.preload import preload_modules\n"
        "thread = preload_modules('scipy.optimize')\n"
        "from scipy import optimize\n"  # waits for the helper's import instead of seeing a half-made module
        "assert optimize.minimize(lambda x: (x[0] - 2.0) ** 2, [0.0]).x[0] > 1.99\n"
        "thread.join()\n"
    )
    assert done.returncode == 0, done.stderr[-2000:]
