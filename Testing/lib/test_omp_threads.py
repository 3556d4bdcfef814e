"""The short OpenMP spin-wait of scoring processes: set before torch loads, never over the user's choice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from AnomalyScoutLib.cli import COMMANDS, SCORING_MODULES

REPOSITORY = Path(__file__).resolve().parents[2]
_LIMIT = "from AnomalyScoutLib.omp_threads import limit_spin_waiting\n"


def _environment_after(code: str, **env: str) -> dict[str, str | None]:
    """Run ``code`` in a fresh interpreter; the OpenMP variables it leaves and whether torch got loaded."""
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    probe = (
        f"{code}\n"
        "import json, os, sys\n"
        "print(json.dumps({k: os.environ.get(k) for k in ('GOMP_SPINCOUNT', 'OMP_WAIT_POLICY')}"
        " | {'torch': str('torch' in sys.modules)}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPOSITORY, env={**clean, **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_short_wait_is_set_before_torch_is_imported_and_not_after():
    before = _environment_after(_LIMIT + "assert limit_spin_waiting()\nimport torch")
    assert before["GOMP_SPINCOUNT"] == "1000" and before["torch"] == "True"
    after = _environment_after("import torch\n" + _LIMIT + "assert not limit_spin_waiting()")
    assert after["GOMP_SPINCOUNT"] is None


@pytest.mark.parametrize("variable, value", [("GOMP_SPINCOUNT", "50000"), ("OMP_WAIT_POLICY", "ACTIVE")])
def test_a_wait_the_user_chose_is_kept(variable, value):
    left = _environment_after(
        "from AnomalyScoutLib.omp_threads import limit_spin_waiting\nlimit_spin_waiting()",
        **{variable: value},
    )
    assert left[variable] == value
    assert left["GOMP_SPINCOUNT"] == (value if variable == "GOMP_SPINCOUNT" else None)


@pytest.mark.parametrize("command, expected", [("score", "1000"), ("phantom", None)])
def test_the_command_line_sets_it_for_scoring_commands_only(command, expected):
    left = _environment_after(
        "import contextlib, io\n"
        "from AnomalyScoutLib.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        f"    main([{command!r}, '--help'])"
    )
    assert left["GOMP_SPINCOUNT"] == expected


def test_the_worker_sets_it_before_it_loads_torch():
    left = _environment_after("import AnomalyScoutLib.worker.__main__")
    assert left["GOMP_SPINCOUNT"] == "1000" and left["torch"] == "True"


def test_every_scoring_module_is_a_command():
    assert SCORING_MODULES <= set(COMMANDS)
