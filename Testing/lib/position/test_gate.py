"""The range gate and the scan-domain check."""

from __future__ import annotations

import numpy as np
import pytest

from AnomalyScoutLib.errors import VolumeError
from AnomalyScoutLib.position.fit import SlicePlacement
from AnomalyScoutLib.position.gate import (
    RangeGate,
    apply_range_gate,
    body_widths_mm,
    domain_check,
    require_in_range,
)


def _placement(positions, beyond=None) -> SlicePlacement:
    positions = np.asarray(positions, dtype=float)
    n = len(positions)
    beyond = np.zeros(n, np.int8) if beyond is None else np.asarray(beyond, np.int8)
    return SlicePlacement(positions, np.full(n, 0.01), positions, beyond, "anatomy", "fitted")


WIDE = 320.0


def test_slices_beyond_the_range_and_its_margin_are_out_with_one_summary_line():
    positions = [-0.2, -0.04, 0.5, 1.04, 1.2, 1.3]
    result = apply_range_gate(_placement(positions), np.full(6, WIDE), RangeGate(margin=0.05))
    assert result.in_range.tolist() == [False, True, True, True, False, False]
    assert result.reason.tolist() == ["below", "", "", "", "above", "above"]
    assert result.summary is not None and "\n" not in result.summary
    assert "3 of 6 slices" in result.summary and "1 below" in result.summary and "2 above" in result.summary


def test_a_summary_for_one_region_names_it():
    result = apply_range_gate(_placement([0.9, 1.2, 1.3]), np.full(3, WIDE))
    assert result.summary == "2 of 3 slices lie above the model's range (chest): not scored"
    assert apply_range_gate(_placement([0.2, 0.5]), np.full(2, WIDE)).summary is None


def test_unanchored_slices_are_out_even_when_their_bound_is_inside_the_margin():
    result = apply_range_gate(_placement([0.98, 0.99], beyond=[1, 1]), np.full(2, WIDE))
    assert not result.in_range.any() and set(result.reason) == {"above"}


def test_a_body_section_narrower_than_an_adult_abdomen_is_out():
    result = apply_range_gate(_placement([0.5, 0.5]), np.array([150.0, WIDE]))
    assert result.in_range.tolist() == [False, True] and result.reason[0] == "narrow"
    assert "head, neck or limb" in result.summary


def test_a_scan_with_no_slice_in_range_stops_with_one_line():
    placement = _placement([1.3, 1.4])
    result = apply_range_gate(placement, np.full(2, WIDE))
    with pytest.raises(VolumeError) as error:
        require_in_range(result, placement)
    assert "no slice of this scan lies in the model's range" in str(error.value)
    assert "above" in str(error.value) and "\n" not in str(error.value)
    require_in_range(apply_range_gate(_placement([0.5]), np.full(1, WIDE)), _placement([0.5]))


def test_body_width_is_measured_in_mm_on_the_largest_section():
    hu = np.full((2, 100, 100), -1000.0, dtype=np.float32)
    hu[0, 30:70, 10:90] = 40.0  # 80 columns of 2 mm: 160 mm
    hu[1, 30:70, 20:30] = 40.0  # two pieces: the larger counts
    hu[1, 30:70, 50:80] = 40.0
    widths = body_widths_mm(hu, (2.0, 2.0))
    assert widths == pytest.approx([160.0, 60.0], abs=4.0)


def test_domain_check_speaks_when_most_in_range_slices_are_above_threshold():
    in_range = np.array([True, True, True, True, False, False])
    above = np.array([True, True, True, False, True, True])
    message = domain_check(above, in_range)
    assert message is not None and "anomalyscout calibrate" in message and "75%" in message
    assert domain_check(np.array([True, False, False, False, True, True]), in_range) is None
