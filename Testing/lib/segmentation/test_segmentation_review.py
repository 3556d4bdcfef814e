"""The pieces of a segmentation review: the grown region and the per-slice risk."""

from __future__ import annotations

import numpy as np
import pytest

from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.segmentation.review import grow_region, slice_risk


def test_grown_region_holds_exactly_the_voxels_within_the_margin_in_millimetres():
    organ = np.zeros((9, 21, 21), dtype=bool)
    organ[4, 10, 10] = True
    spacing_zyx = (5.0, 1.0, 2.0)
    region = grow_region(organ, spacing_zyx, 6.0)
    k, r, c = np.indices(organ.shape)
    distance = np.sqrt(((k - 4) * 5.0) ** 2 + ((r - 10) * 1.0) ** 2 + ((c - 10) * 2.0) ** 2)
    np.testing.assert_array_equal(region, distance <= 6.0)


def test_a_margin_of_zero_keeps_the_organ_and_a_negative_one_is_refused():
    organ = np.zeros((4, 6, 6), dtype=bool)
    organ[1:3, 2:4, 1:5] = True
    np.testing.assert_array_equal(grow_region(organ, (1.0, 1.0, 1.0), 0.0), organ)
    with pytest.raises(ConfigError, match="margin"):
        grow_region(organ, (1.0, 1.0, 1.0), -1.0)


def test_risk_is_the_exceedance_infinite_on_metal_and_blank_where_the_region_does_not_reach():
    metal = np.array([False, True, False, False])
    risk = slice_risk(np.array([0.5, 0.2, 1.5, 2.5]), np.array([True, True, True, False]), metal)
    np.testing.assert_allclose(risk[[0, 2]], [0.5, 1.5])
    assert risk[1] == np.inf and np.isnan(risk[3])
