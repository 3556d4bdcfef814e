"""Synthetic anomalies: inside the body, visible where the truth says, seeded, inputs untouched."""

from __future__ import annotations

import pytest
import torch

from AnomalyScoutLib.anomaly_map.synthesis import CHANGE_THRESHOLD_HU, FAMILIES, synthesize, synthesize_batch
from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.preprocessing import HUWindow, body_mask

torch.set_num_threads(1)
WINDOW = HUWindow()


@pytest.fixture(scope="module")
def slices(tiny_phantom):
    hu = torch.from_numpy(tiny_phantom.volume.array_zyx[[8, 16]].astype("float32"))
    body = torch.from_numpy(body_mask(tiny_phantom.volume.array_zyx[[8, 16]]))
    return WINDOW.normalize(hu), body


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_changes_the_body_only_and_its_truth_is_the_visible_change(slices, family):
    images, body = slices
    image, donor = images[0].clone(), images[1]
    masks = 0
    for seed in range(4):
        changed, truth = synthesize(
            image, body[0], donor, family, torch.Generator().manual_seed(seed), WINDOW
        )
        assert torch.equal(image, images[0])  # the input is not modified
        assert changed.shape == image.shape and changed.abs().max() <= 1.0
        assert torch.equal(changed[~body[0]], image[~body[0]])
        assert not (truth & ~body[0]).any()
        assert ((changed - image)[truth].abs() * WINDOW.width / 2 >= CHANGE_THRESHOLD_HU).all()
        masks += int(truth.sum())
    assert masks > 0  # the family does make anomalies


def test_the_same_seed_repeats_an_anomaly(slices):
    images, body = slices
    a = synthesize(images[0], body[0], images[1], "texture", torch.Generator().manual_seed(5), WINDOW)
    b = synthesize(images[0], body[0], images[1], "texture", torch.Generator().manual_seed(5), WINDOW)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_a_batch_leaves_the_slices_without_a_family_normal(slices):
    images, body = slices
    made = synthesize_batch(
        images, body, images.flip(0), ["warp", None], torch.Generator().manual_seed(0), WINDOW
    )
    assert torch.equal(made.images[1], images[1]) and not made.masks[1].any()
    assert made.masks[0].any()


def test_refuses_an_unknown_family_and_mismatched_shapes(slices):
    images, body = slices
    with pytest.raises(ConfigError, match="tumour"):
        synthesize(images[0], body[0], images[1], "tumour", torch.Generator())
    with pytest.raises(ValueError, match="shape"):
        synthesize(images[0], body[0][:-1], images[1], "warp", torch.Generator())
    with pytest.raises(ValueError, match="families"):
        synthesize_batch(images, body, images, ["warp"], torch.Generator())
