"""The segmentation-failure track's pieces: the review region, the failure metrics and the baselines' noise
(no MONAI needed: the segmenter itself is exercised by the benchmark run)."""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.baselines.denoising_autoencoder import coarse_noise
from benchmarks.monai_segmenter import augment_batch
from benchmarks.segfail_track import failure_metrics, review_region

torch.set_num_threads(1)


def test_review_region_grows_the_prediction_and_falls_back_to_the_body_where_none_was_found():
    predicted = np.zeros((2, 9, 9), dtype=bool)
    predicted[0, 4, 4] = True
    body = np.ones((2, 9, 9), dtype=bool)
    body[:, 0] = False
    region = review_region(predicted, body, 2)
    rows, cols = np.nonzero(region[0])
    assert region[0].sum() == 13 and abs(rows - 4).max() == 2 and abs(cols - 4).max() == 2  # a 2-px diamond
    np.testing.assert_array_equal(region[1], body[1])


def test_failure_metrics_rank_failed_slices_and_correlate_with_the_error_area():
    dice = np.array([0.95, 0.97, 0.5, 0.3, 0.99])
    error = np.array([10.0, 5.0, 200.0, 300.0, 1.0])
    perfect = failure_metrics(1.0 - dice, dice, error, 0.9)
    assert perfect["failure_auroc"] == 1.0 and perfect["spearman_vs_error_area"] == 1.0
    assert failure_metrics(dice, dice, error, 0.9)["failure_auroc"] == 0.0
    nothing_failed = failure_metrics(dice, np.ones(5), error, 0.9)
    assert nothing_failed["failure_auroc"] is None and nothing_failed["spearman_vs_1_minus_dice"] is None


def test_coarse_noise_is_smooth_at_the_16_px_scale_with_the_asked_spread():
    noise = coarse_noise((64, 1, 128, 128), torch.Generator().manual_seed(0), coarse=16, sigma=0.4)
    assert noise.shape == (64, 1, 128, 128)
    neighbours = (noise[..., 1:] - noise[..., :-1]).abs().mean()
    # Pixel noise would make neighbours differ by more than the values themselves (ratio ~1.4); coarse noise
    # changes over 8 px.
    assert neighbours < 0.3 * noise.abs().mean()
    assert 0.2 < float(noise.std()) < 0.45  # bilinear upsampling keeps most of sigma


def test_augmentation_moves_image_and_mask_together():
    images = -torch.ones(4, 1, 32, 32)
    images[:, :, 8:20, 6:18] = 0.5
    masks = (images > 0).float()
    moved, moved_masks = augment_batch(images, masks, torch.Generator().manual_seed(1))
    assert set(moved_masks.unique().tolist()) <= {0.0, 1.0}
    for image, mask in zip(moved, moved_masks):
        inside, outside = image[mask > 0], image[mask == 0]
        assert inside.mean() > outside.mean() + 0.8  # the bright square is still under its mask
