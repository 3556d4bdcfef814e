"""Which way the anatomy runs: the fit's own rank correlation, and what placing a scan imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from AnomalyScoutLib.position.fit import MM_PER_UNIT, _rank_correlation, fit_positions

REPOSITORY = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("seed", range(10))
def test_the_rank_correlation_is_spearmans_also_with_tied_estimates(seed):
    rng = np.random.default_rng(seed)
    z = np.arange(40) * 2.5
    own = np.round(rng.uniform(0.1, 0.9, 40) - 0.01 * z * rng.choice([-1, 1]), 1)  # rounded: ties
    assert _rank_correlation(z, own) == pytest.approx(scipy.stats.spearmanr(z, own)[0], abs=1e-12)


def test_constant_estimates_give_no_direction_and_the_scan_is_not_reversed():
    z = np.arange(30) * 3.0
    own = np.full(30, 0.4)
    assert _rank_correlation(z, own) == 0.0
    assert not fit_positions(own, z, slice_error=0.05).reversed


def test_a_noisy_scan_running_against_z_is_still_found_reversed():
    rng = np.random.default_rng(3)
    z = np.arange(60) * 3.0
    own = 0.8 - z / MM_PER_UNIT + rng.normal(0, 0.03, 60)
    assert fit_positions(own, z, slice_error=0.05).reversed
    assert not fit_positions(own[::-1].copy(), z, slice_error=0.05).reversed


def test_placing_a_scan_by_anatomy_does_not_import_scipy_stats():
    code = (
        "import sys, numpy as np\n"
        "from AnomalyScoutLib.position.fit import fit_positions\n"
        "z = np.arange(40) * 3.0\n"
        "assert fit_positions(0.3 + z / 330.0, z, slice_error=0.05).method == 'anatomy'\n"
        "assert 'scipy.optimize' in sys.modules and 'scipy.stats' not in sys.modules, sorted(sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
