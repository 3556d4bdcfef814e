"""The per-scan fit: a robust straight line in z-mm through the regressor's slice estimates."""

from __future__ import annotations

import numpy as np
import pytest

from AnomalyScoutLib.errors import VolumeError
from AnomalyScoutLib.position.fit import BODY_SCALE_RANGE, MM_PER_UNIT, fit_positions


def _scan(n: int = 60, step_mm: float = 3.0, start: float = 0.25, mm_per_unit: float = MM_PER_UNIT):
    z = np.arange(n) * step_mm
    return z, start + z / mm_per_unit


def test_recovers_a_scan_from_noisy_estimates_despite_misplaced_slices():
    z, truth = _scan()
    own = truth + np.random.default_rng(0).normal(0.0, 0.03, len(z))
    own[[4, 30, 31]] = [0.9, 0.05, 0.95]  # a bowel loop read as chest, and so on
    placement = fit_positions(own, z, slice_error=0.05)
    assert np.abs(placement.positions - truth).max() < 0.02
    assert np.all(np.diff(placement.positions) > 0)  # monotone
    assert placement.method == "anatomy" and "robust straight-line fit" in placement.how
    assert np.all(placement.uncertainty > 0) and np.all(placement.uncertainty < 0.02)
    assert not placement.beyond.any() and not placement.reversed


def test_fits_the_body_scale_within_its_range():
    z, truth = _scan(mm_per_unit=290.0)
    placement = fit_positions(truth, z, slice_error=0.05)
    assert placement.mm_per_unit == pytest.approx(290.0, rel=0.03)
    z, truth = _scan(n=30, start=0.1, mm_per_unit=150.0)  # no adult is this short: the scale is bounded
    placement = fit_positions(truth, z, slice_error=0.05)
    assert placement.mm_per_unit == pytest.approx(MM_PER_UNIT * BODY_SCALE_RANGE[0], rel=1e-3)


def test_a_single_slice_says_that_it_was_placed_from_its_own_image():
    placement = fit_positions(np.array([0.42]), np.array([120.0]), slice_error=0.04)
    assert placement.positions.tolist() == [0.42] and placement.uncertainty.tolist() == [0.04]
    assert "one slice" in placement.how and "own image" in placement.how


def test_few_slices_fit_only_the_offset_at_the_standard_body_size():
    z, truth = _scan(n=3, step_mm=1.0)
    placement = fit_positions(truth + 0.01, z, slice_error=0.05)
    assert placement.mm_per_unit == pytest.approx(MM_PER_UNIT)
    assert placement.positions == pytest.approx(truth + 0.01, abs=1e-6)
    assert "too few" in placement.how


def test_a_scan_saturating_at_the_top_is_a_lower_bound_beyond_the_range():
    z, _ = _scan(n=40)
    own = np.full(40, 0.99)
    own[0] = 0.985
    placement = fit_positions(own, z, slice_error=0.05)
    assert (placement.beyond == 1).all() and "at or above the top" in placement.how
    assert placement.positions.min() >= 0.98
    below = fit_positions(np.full(40, 0.0), z, slice_error=0.05)
    assert (below.beyond == -1).all() and below.positions.max() <= 0.02


def test_an_anchored_scan_extrapolates_beyond_the_top_with_z():
    z, truth = _scan(n=80, start=0.7)  # from the pancreas to above the lung bases
    own = np.minimum(truth, 0.99)
    placement = fit_positions(own, z, slice_error=0.05)
    assert placement.positions[-1] == pytest.approx(truth[-1], abs=0.02) and truth[-1] > 1.3
    assert not placement.beyond.any()


def test_anatomy_running_against_z_is_fitted_and_reported():
    z, truth = _scan()
    placement = fit_positions(truth[::-1].copy(), z, slice_error=0.05)
    assert placement.reversed and "opposite" in placement.how
    assert placement.positions == pytest.approx(truth[::-1], abs=0.01)


@pytest.mark.parametrize(
    "own, z",
    [
        (np.array([]), np.array([])),
        (np.array([0.1, 0.2]), np.array([0.0])),
        (np.array([np.nan]), np.array([0.0])),
    ],
)
def test_refuses_inconsistent_input(own, z):
    with pytest.raises(VolumeError):
        fit_positions(own, z, slice_error=0.05)
