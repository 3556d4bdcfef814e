"""Residual maps, slice scores and case scores on hand-made tensors (no network needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.scoring import (
    ScoreConfig,
    case_score,
    feature_residual,
    gaussian_smooth,
    patch_wasserstein,
    residual_maps,
    score_slices,
    top_fraction_mean,
)

torch.set_num_threads(1)


def _blob_pair(size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two slices, identical to their reconstruction except for a bright 4x4 blob in the second."""
    recon = torch.zeros(2, size, size)
    image = recon.clone()
    image[1, 12:16, 12:16] = 1.0
    mask = torch.zeros(2, size, size, dtype=torch.bool)
    mask[:, 4:28, 4:28] = True
    return image, recon, mask


def test_smoothing_keeps_the_total_and_spreads_a_spike():
    spike = torch.zeros(1, 21, 21)
    spike[0, 10, 10] = 1.0
    smooth = gaussian_smooth(spike, 1.5)
    assert torch.isclose(smooth.sum(), torch.tensor(1.0), atol=1e-5)
    assert smooth[0, 10, 10] < 0.2 and smooth[0, 10, 12] > 0


def test_residual_is_zero_outside_the_mask_and_on_perfect_reconstructions():
    image, recon, mask = _blob_pair()
    image[0, 0, 0] = 1.0  # outside the body: must not count
    residual = residual_maps(image, recon, mask, 1.0)
    assert residual[~mask].abs().max() == 0
    assert residual[0].max() == 0
    assert residual[1].max() > 0.1


def test_residual_is_the_smoothed_absolute_difference():
    recon = torch.zeros(1, 32, 32)
    image = recon.clone()
    image[0, 8:24, 8:24] = -0.5  # darker than the reconstruction: the residual is |-0.5|, not 0.25 or -0.5
    image[0, 4, 28] = 1.0  # a one-pixel spike, which smoothing spreads to its neighbours
    mask = torch.ones(1, 32, 32, dtype=torch.bool)
    residual = residual_maps(image, recon, mask, 1.0)
    assert residual[0, 16, 16].item() == pytest.approx(0.5, abs=1e-6)  # well inside: blur of a constant
    kernel = torch.exp(-0.5 * torch.arange(-3.0, 4.0) ** 2)
    centre = (1.0 / kernel.sum()) ** 2  # a unit spike keeps the kernel's centre weight squared
    assert residual[0, 4, 28].item() == pytest.approx(centre.item(), rel=1e-5)
    assert residual[0, 5, 28] > 0 and residual[0, 4, 27] > 0


def test_residual_refuses_mismatched_shapes():
    image, recon, mask = _blob_pair()
    with pytest.raises(ValueError, match="same"):
        residual_maps(image, recon[:, :-1], mask, 1.0)


def test_top_fraction_mean_averages_the_highest_valid_entries_only():
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0, 100.0], [5.0, 0.0, 0.0, 0.0, 0.0]])
    valid = torch.tensor([[True, True, True, True, False], [False] * 5])
    result = top_fraction_mean(values, valid, 0.5)
    assert result.tolist() == pytest.approx([3.5, 0.0])


def test_a_slice_with_a_blob_outscores_a_clean_one_with_both_methods():
    image, recon, mask = _blob_pair()
    residual = residual_maps(image, recon, mask, 1.0)
    for method in ("topk", "wasserstein"):
        scores = score_slices(
            image, recon, mask, residual, torch.zeros(2), ScoreConfig(method=method, patch_px=8)
        )
        assert scores.score[1] > scores.score[0] == 0


def test_wasserstein_is_zero_for_a_shuffled_patch_and_positive_for_a_shifted_one():
    image = torch.rand(1, 8, 8)
    shuffled = image.flatten()[torch.randperm(64)].view(1, 8, 8)
    mask = torch.ones(1, 8, 8, dtype=torch.bool)
    same, inside = patch_wasserstein(image, shuffled, mask, 8)
    shifted, _ = patch_wasserstein(image, image + 0.25, mask, 8)
    assert inside.all() and same.item() == pytest.approx(0.0, abs=1e-6)
    assert shifted.item() == pytest.approx(0.25, abs=1e-6)


def test_only_patches_at_least_half_inside_the_mask_count():
    image = torch.zeros(1, 16, 16)
    mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    mask[0, :8, :12] = True  # patch (0, 0) wholly inside, (0, 1) half inside
    mask[0, 8:12, :4] = True  # patch (1, 0) a quarter inside, (1, 1) outside
    image[0, 8:16, 0:8] = 5.0  # a big difference in the quarter-inside patch only
    distances, inside = patch_wasserstein(image, torch.zeros_like(image), mask, 8)
    assert inside.tolist() == [[True, True, False, False]]
    assert distances[0, 2].item() == pytest.approx(5.0)
    scores = score_slices(
        image, torch.zeros_like(image), mask, torch.zeros_like(image), torch.zeros(1),
        ScoreConfig(method="wasserstein", patch_px=8, top_fraction=1.0, kappa=0.0),
    )  # fmt: skip
    assert scores.pixel.item() == 0.0


def test_the_default_wasserstein_patch_is_a_sixteenth_of_the_slice():
    rng = torch.Generator().manual_seed(0)
    image, recon = torch.rand(1, 64, 64, generator=rng), torch.rand(1, 64, 64, generator=rng)
    mask = torch.ones(1, 64, 64, dtype=torch.bool)
    residual = residual_maps(image, recon, mask, 0.0)

    def pixel(patch_px: int) -> float:
        config = ScoreConfig(method="wasserstein", patch_px=patch_px)
        return score_slices(image, recon, mask, residual, torch.zeros(1), config).pixel.item()

    assert pixel(0) == pixel(4) and pixel(4) != pixel(8)


def test_feature_residual_is_the_mean_squared_difference_weighted_by_kappa():
    image, recon, mask = _blob_pair()
    residual = residual_maps(image, recon, mask, 0.0)
    features = feature_residual(torch.tensor([[3.0, 1.0], [0.0, 0.0]]), torch.zeros(2, 2))
    scores = score_slices(image, recon, mask, residual, features, ScoreConfig(kappa=2.0))
    assert scores.feature.tolist() == [5.0, 0.0]  # (9 + 1) / 2; |.| would give 2, the root 2.24
    assert scores.score[0].item() == pytest.approx(scores.pixel[0].item() + 10.0)


def test_case_score_is_the_mean_of_the_highest_slice_scores_ignoring_nan():
    config = ScoreConfig(case_top=2)
    assert case_score(np.array([0.1, 0.9, np.nan, 0.5]), config) == pytest.approx(0.7)
    assert np.isnan(case_score(np.array([]), config))


@pytest.mark.parametrize(
    "kwargs", [{"method": "mse"}, {"top_fraction": 0.0}, {"kappa": -1.0}, {"case_top": 0}, {"patch_px": -1}]
)
def test_refuses_an_invalid_score_configuration(kwargs):
    with pytest.raises(ConfigError):
        ScoreConfig(**kwargs)


def test_a_blur_wider_than_a_small_map_keeps_a_constant_map_constant():
    from AnomalyScoutLib.scoring import gaussian_smooth

    maps = torch.full((2, 6, 6), 0.7)
    maps[1, 2, 3] = 5.0
    blurred = gaussian_smooth(maps, sigma_px=9.0)
    assert blurred.shape == maps.shape
    torch.testing.assert_close(blurred[0], maps[0])
    assert blurred[1].max() < 5.0 and torch.isfinite(blurred).all()
