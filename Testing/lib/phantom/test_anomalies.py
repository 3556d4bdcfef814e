"""Inserted anomalies: exact masks, per-slice labels, and the tissue each kind is supposed to produce."""

from __future__ import annotations

import numpy as np
import pytest

from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.phantom import ANOMALY_CODES, make_phantom
from AnomalyScoutLib.phantom.anomalies import METAL_HU

SHAPE = (64, 64, 24)
SEED = 0


@pytest.fixture(scope="module", params=sorted(ANOMALY_CODES))
def anomalous(request):
    return request.param, make_phantom(SEED, shape_xyz=SHAPE, anomalies=(request.param,))


def test_voxels_outside_the_mask_equal_the_normal_case_of_the_same_seed(anomalous, tiny_phantom):
    _, case = anomalous
    outside = case.anomaly_mask == 0
    np.testing.assert_array_equal(case.volume.array_zyx[outside], tiny_phantom.volume.array_zyx[outside])


def test_every_masked_voxel_was_changed_and_carries_the_kind_code(anomalous, tiny_phantom):
    kind, case = anomalous
    inside = case.anomaly_mask > 0
    assert inside.any()
    assert np.all(case.volume.array_zyx[inside] != tiny_phantom.volume.array_zyx[inside])
    assert set(np.unique(case.anomaly_mask[inside])) == {ANOMALY_CODES[kind]}


def test_per_slice_labels_and_the_record_match_the_mask(anomalous):
    kind, case = anomalous
    expected = case.anomaly_mask.any(axis=(1, 2))
    np.testing.assert_array_equal(case.slice_labels, expected)
    (record,) = case.anomalies
    assert record.kind == kind and record.code == ANOMALY_CODES[kind]
    assert list(record.slices) == list(np.flatnonzero(expected))
    assert record.voxels == int((case.anomaly_mask > 0).sum())


def test_anomalies_leave_the_label_map_of_the_normal_anatomy(anomalous, tiny_phantom):
    np.testing.assert_array_equal(anomalous[1].labels, tiny_phantom.labels)


def test_a_tumour_lies_inside_the_liver_and_differs_from_it(tiny_phantom):
    case = make_phantom(SEED, shape_xyz=SHAPE, anomalies=("tumour",))
    inside = case.anomaly_mask > 0
    assert np.all(case.labels[inside] == 2)
    (record,) = case.anomalies
    shift = case.volume.array_zyx[inside] - tiny_phantom.volume.array_zyx[inside]
    assert np.sign(np.median(shift)) == (-1 if record.parameters["density"] == "hypo" else 1)


def test_metal_reaches_metal_density_and_streaks_reach_beyond_it(tiny_anomalous_phantom, tiny_phantom):
    metal = tiny_anomalous_phantom.anomaly_mask == ANOMALY_CODES["metal"]
    values = tiny_anomalous_phantom.volume.array_zyx[metal]
    assert values.max() >= 0.6 * METAL_HU
    streaks = metal & (tiny_anomalous_phantom.volume.array_zyx < 500)
    delta = tiny_anomalous_phantom.volume.array_zyx[streaks] - tiny_phantom.volume.array_zyx[streaks]
    assert (delta > 0).any() and (delta < 0).any()  # bright and dark rays
    assert streaks.sum() > 5 * (values >= 1000).sum()


def test_ascites_is_water_density_fluid_inside_the_body():
    normal = make_phantom(4, shape_xyz=(96, 96, 32))
    case = make_phantom(4, shape_xyz=(96, 96, 32), anomalies=("ascites",))
    inside = case.anomaly_mask > 0
    assert np.all(normal.labels[inside] > 0)
    assert -15.0 <= float(np.median(case.volume.array_zyx[inside])) <= 35.0
    assert case.anomalies[0].parameters["volume_ml"] > 0


def test_the_same_seed_reproduces_the_anomalies_exactly(tiny_anomalous_phantom):
    again = make_phantom(SEED, shape_xyz=SHAPE, anomalies=("tumour", "metal"))
    np.testing.assert_array_equal(again.volume.array_zyx, tiny_anomalous_phantom.volume.array_zyx)
    np.testing.assert_array_equal(again.anomaly_mask, tiny_anomalous_phantom.anomaly_mask)


def test_several_anomalies_each_get_a_record_and_later_ones_win_overlaps(tiny_anomalous_phantom):
    kinds = [a.kind for a in tiny_anomalous_phantom.anomalies]
    assert kinds == ["tumour", "metal"]
    codes = set(np.unique(tiny_anomalous_phantom.anomaly_mask)) - {0}
    assert codes <= {ANOMALY_CODES["tumour"], ANOMALY_CODES["metal"]}
    assert ANOMALY_CODES["metal"] in codes


def test_an_unknown_kind_is_refused():
    with pytest.raises(ConfigError, match="gremlin"):
        make_phantom(SEED, shape_xyz=SHAPE, anomalies=("tumour", "gremlin"))
