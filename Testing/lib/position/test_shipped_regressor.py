"""The shipped body-part regressor (``models/position.safetensors``) places slices where they are.

Loose bounds on what ``benchmarks/position_track.py`` measures precisely: they fail for an untrained or
swapped regressor, not for the ordinary spread of a trained one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from AnomalyScoutLib.io.geometry import axial_frame, to_canonical
from AnomalyScoutLib.io.volume import read_volume
from AnomalyScoutLib.phantom import make_phantom
from AnomalyScoutLib.position.placement import place_slices
from AnomalyScoutLib.position.store import load_regressor

REPO = Path(__file__).resolve().parents[3]
#: Far from every phantom seed the regressor was trained or validated on (100000+).
HELD_OUT_SEED = 4243


@pytest.fixture(scope="module")
def shipped_regressor():
    regressor, _ = load_regressor(REPO / "models" / "position.safetensors")
    return regressor


def _canonical(volume):
    frame = axial_frame(volume)
    return to_canonical(volume.array_zyx, frame).astype(np.float32), frame.spacing_kji


def test_a_cut_of_a_held_out_phantom_is_placed_at_its_true_positions(shipped_regressor):
    canonical, spacing = _canonical(make_phantom(HELD_OUT_SEED, shape_xyz=(96, 96, 60)).volume)
    truth = (np.arange(len(canonical)) + 0.5) / len(canonical)  # the phantom's scale is its index
    cut = slice(18, 48)  # mid abdomen to liver, no end of the body in view
    placement = place_slices(canonical[cut], spacing, shipped_regressor, "anatomy")
    assert placement.method == "anatomy" and not placement.reversed
    assert np.median(np.abs(placement.positions - truth[cut])) < 0.05


def test_the_real_fixture_runs_from_the_pelvis_upwards(shipped_regressor):
    canonical, spacing = _canonical(
        read_volume(REPO / "Testing/Data/totalsegmentator_abdomen/example_ct.nii.gz")
    )
    placement = place_slices(canonical, spacing, shipped_regressor, "anatomy")
    assert not placement.reversed and np.all(np.diff(placement.positions) > 0)
    assert placement.positions[0] < 0.15 and placement.positions[-1] > 0.6  # pelvis ... upper abdomen


def test_a_crop_of_the_real_fixture_lands_where_its_slices_lie_in_the_whole_scan(shipped_regressor):
    """The issue's 20-slice upper-abdomen series, made from the fixture: placed from its own slices, it must
    agree with the whole scan's placement (the first regressor, trained with too few real runs, put it
    0.12 lower)."""
    canonical, spacing = _canonical(
        read_volume(REPO / "Testing/Data/totalsegmentator_abdomen/example_ct.nii.gz")
    )
    whole = place_slices(canonical, spacing, shipped_regressor, "anatomy").positions
    crop = place_slices(canonical[88:108], spacing, shipped_regressor, "anatomy").positions
    assert np.median(np.abs(crop - whole[88:108])) < 0.05
