"""The phantom's normal cases: determinism, variety, geometry, label codes and plausible HU per tissue."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.phantom import LABEL_NAMES, make_phantom

SHAPE = (64, 64, 24)

# Median HU of the interior of each labelled tissue, portal-venous phase (enhancement 1), generous bounds.
HU_RANGES = {
    0: (-1024, -950),  # air
    1: (-140, -40),  # body: mostly fat
    2: (85, 140),  # liver
    3: (90, 140),  # spleen
    4: (110, 220),  # kidneys
    8: (120, 250),  # aorta, IVC
    9: (25, 75),  # muscle
    10: (180, 1300),  # bone
    11: (-940, -700),  # lung
}


def test_the_same_seed_gives_the_same_case_voxel_for_voxel(tiny_phantom):
    again = make_phantom(0, shape_xyz=SHAPE)
    np.testing.assert_array_equal(again.volume.array_zyx, tiny_phantom.volume.array_zyx)
    np.testing.assert_array_equal(again.labels, tiny_phantom.labels)
    assert again.habitus == tiny_phantom.habitus


def test_different_seeds_give_different_bodies(tiny_phantom):
    other = make_phantom(1, shape_xyz=SHAPE)
    assert other.habitus != tiny_phantom.habitus
    changed = np.mean(other.labels != tiny_phantom.labels)
    assert changed > 0.05


def test_a_normal_case_has_no_anomaly(tiny_phantom):
    assert not tiny_phantom.anomaly_mask.any()
    assert not tiny_phantom.slice_labels.any()
    assert tiny_phantom.anomalies == ()


def test_volume_is_whole_hu_in_canonical_order_with_the_requested_grid(tiny_phantom):
    volume = tiny_phantom.volume
    assert volume.array_zyx.shape == (SHAPE[2], SHAPE[1], SHAPE[0])
    assert volume.array_zyx.dtype == np.float32
    np.testing.assert_array_equal(volume.array_zyx, np.rint(volume.array_zyx))
    assert volume.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert volume.array_zyx.min() >= -1024 and volume.array_zyx.max() <= 3071


def test_explicit_spacing_is_kept():
    case = make_phantom(2, shape_xyz=(40, 40, 10), spacing_xyz=(8.0, 8.0, 30.0))
    assert case.volume.spacing_xyz == (8.0, 8.0, 30.0)


def test_only_published_label_codes_appear(tiny_phantom):
    assert set(np.unique(tiny_phantom.labels)) <= set(LABEL_NAMES)


def test_anatomy_follows_the_position_from_pelvis_to_lung_bases(tiny_phantom):
    labels = tiny_phantom.labels
    n = labels.shape[0]
    bottom, top = labels[: n // 4], labels[3 * n // 4 :]
    assert (bottom == 7).any() and not (top == 7).any()  # bladder in the pelvis only
    assert (top == 2).any() and not (bottom == 2).any()  # liver in the upper abdomen only
    assert (labels[-1] == 11).any() and not (labels[: n // 2] == 11).any()  # lung bases at the top
    assert (labels == 1).all(axis=(1, 2)).sum() == 0 and (labels == 1).any(
        axis=(1, 2)
    ).all()  # body everywhere


@pytest.mark.parametrize("label", sorted(HU_RANGES))
def test_tissue_interiors_have_plausible_hounsfield_units(label):
    case = make_phantom(3, shape_xyz=(96, 96, 32), enhancement=1.0)
    region = ndimage.binary_erosion(case.labels == label, structure=np.ones((1, 3, 3), bool))
    assert region.sum() >= 5, f"label {label} too small to measure"
    low, high = HU_RANGES[label]
    assert low <= float(np.median(case.volume.array_zyx[region])) <= high


def test_contrast_enhancement_brightens_liver_and_vessels_but_not_fat():
    plain = make_phantom(6, shape_xyz=SHAPE, enhancement=0.0)
    portal = make_phantom(6, shape_xyz=SHAPE, enhancement=1.0)
    np.testing.assert_array_equal(plain.labels, portal.labels)

    def median(case, label):
        return float(np.median(case.volume.array_zyx[case.labels == label]))

    assert median(portal, 2) - median(plain, 2) > 30.0
    assert median(portal, 8) - median(plain, 8) > 60.0
    assert abs(median(portal, 1) - median(plain, 1)) < 15.0
    assert plain.habitus["enhancement"] == 0.0


def test_soft_tissue_noise_is_in_the_ct_range():
    case = make_phantom(4, shape_xyz=(96, 96, 24), noise_hu=15.0)
    liver = ndimage.binary_erosion(case.labels == 2, iterations=2)
    values = case.volume.array_zyx[liver]
    assert 8.0 < values.std() < 30.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"seed": -1},
        {"seed": 0, "shape_xyz": (64, 64)},
        {"seed": 0, "shape_xyz": (4, 64, 24)},
        {"seed": 0, "shape_xyz": (64, 64, 24), "spacing_xyz": (1.0, 1.0, 3.0)},  # 64 mm field of view
        {"seed": 0, "anomalies": ("gremlin",)},
        {"seed": 0, "noise_hu": -3.0},
        {"seed": 0, "enhancement": 1.5},
    ],
)
def test_bad_arguments_raise_a_config_error_naming_the_problem(kwargs):
    with pytest.raises(ConfigError):
        make_phantom(**kwargs)
