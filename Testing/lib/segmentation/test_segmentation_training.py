"""Training, prediction, uncertainty and features of the slice segmenter on tiny synthetic discs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from AnomalyScoutLib.segmentation import (
    UNet,
    predict_probabilities,
    predictive_entropy,
    segmentation_features,
    train_segmenter,
)

torch.set_num_threads(1)


def _discs(n: int, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bright discs of random centre and radius on noise, and their masks."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n):
        r, c = rng.uniform(4, size - 4, 2)
        masks[i] = (rows - r) ** 2 + (cols - c) ** 2 <= rng.uniform(2, 4) ** 2
    images = (masks * 1.5 - 0.75 + rng.normal(0, 0.2, masks.shape)).astype(np.float32)
    return images, masks


def _net(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(channels=(4, 8), dropout=0.2)


def test_a_few_steps_lower_the_loss():
    images, masks = _discs(8)
    losses = train_segmenter(_net(), images, masks, steps=40, batch_size=4, lr=1e-2)
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_training_is_reproducible_for_a_seed():
    images, masks = _discs(6)
    first = train_segmenter(_net(), images, masks, steps=5, batch_size=2, seed=3)
    second = train_segmenter(_net(), images, masks, steps=5, batch_size=2, seed=3)
    assert first == second


def test_refuses_images_and_masks_of_different_shapes():
    images, masks = _discs(4)
    with pytest.raises(ValueError, match="same shape"):
        train_segmenter(_net(), images, masks[:3], steps=1)


def test_predictions_are_probabilities_of_the_input_shape():
    images, _ = _discs(3)
    probabilities = predict_probabilities(_net(), images)
    assert probabilities.shape == images.shape
    assert probabilities.min() >= 0 and probabilities.max() <= 1


@pytest.mark.parametrize("method", ["mc_dropout", "tta"])
def test_entropy_is_one_non_negative_value_per_slice_and_reproducible(method):
    images, _ = _discs(5)
    net = _net()
    first = predictive_entropy(net, images, method=method, samples=4, seed=1)
    assert first.shape == (5,)
    assert (first >= 0).all() and (first <= np.log(2) + 1e-6).all()
    np.testing.assert_allclose(first, predictive_entropy(net, images, method=method, samples=4, seed=1))
    assert not net.training


def test_a_trained_model_is_more_certain_on_its_kind_of_slice_than_on_noise():
    images, masks = _discs(8)
    net = _net()
    train_segmenter(net, images, masks, steps=60, batch_size=4, lr=1e-2)
    noise = np.random.default_rng(1).normal(0, 1.5, images.shape).astype(np.float32)
    on_discs, on_noise = predictive_entropy(net, images, samples=6), predictive_entropy(net, noise, samples=6)
    assert on_discs.mean() < on_noise.mean()


def test_mc_dropout_samples_differ_so_the_entropy_differs_from_a_single_pass():
    images, _ = _discs(4)
    net = _net()
    single = predictive_entropy(net, images, method="tta", samples=1)
    sampled = predictive_entropy(net, images, method="mc_dropout", samples=8)
    assert not np.allclose(single, sampled)


def test_features_have_one_row_per_slice():
    images, _ = _discs(4)
    assert segmentation_features(_net(), images).shape == (4, 8)


def test_fine_tuning_continues_the_given_optimiser_instead_of_restarting_it():
    images, masks = _discs(4)
    net = _net()
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    train_segmenter(net, images, masks, steps=3, batch_size=2, optimiser=optimiser)
    train_segmenter(net, images, masks, steps=2, batch_size=2, optimiser=optimiser)
    steps = {float(state["step"]) for state in optimiser.state.values()}
    assert steps == {5.0}
