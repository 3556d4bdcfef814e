"""GAN quality metrics against closed forms, scipy's reference implementations and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from AnomalyScoutLib.errors import MetricError
from AnomalyScoutLib.metrics import (
    feature_statistics,
    frechet_distance,
    frechet_distance_from_statistics,
    kl_divergence,
    mutual_information,
    wasserstein_1d,
)


def random_spd(rng: np.random.Generator, size: int) -> np.ndarray:
    factor = rng.normal(size=(size, size))
    return factor @ factor.T + 0.1 * np.eye(size)


def test_frechet_distance_of_one_dimensional_gaussians_is_the_closed_form():
    # (μa − μb)² + (σa − σb)² for 1-D Gaussians
    distance = frechet_distance_from_statistics(
        np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])
    )
    assert distance == pytest.approx((1 - 3) ** 2 + (2 - 3) ** 2)


def test_frechet_distance_matches_the_sqrtm_formula_for_non_commuting_covariances():
    rng = np.random.default_rng(0)
    mean_a, mean_b = rng.normal(size=6), rng.normal(size=6)
    cov_a, cov_b = random_spd(rng, 6), random_spd(rng, 6)
    reference = (
        np.sum((mean_a - mean_b) ** 2)
        + np.trace(cov_a + cov_b)
        - 2 * np.trace(scipy.linalg.sqrtm(cov_a @ cov_b)).real
    )
    assert frechet_distance_from_statistics(mean_a, cov_a, mean_b, cov_b) == pytest.approx(
        reference, rel=1e-9
    )


def test_frechet_distance_is_zero_for_identical_sets_and_a_squared_shift_for_translated_ones():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(50, 8))
    shift = rng.normal(size=8)
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(features, features + shift) == pytest.approx(np.sum(shift**2), rel=1e-9)


def test_frechet_distance_stays_real_symmetric_and_non_negative_with_fewer_samples_than_features():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(10, 64)), rng.normal(0.2, 1.0, size=(12, 64))  # singular covariances
    forward, backward = frechet_distance(a, b), frechet_distance(b, a)
    assert math.isfinite(forward) and forward > 0
    assert forward == pytest.approx(backward, rel=1e-9)


@pytest.mark.parametrize("n_samples", [(10, 12), (40, 50)])
def test_frechet_distance_of_samples_equals_the_covariance_formula_with_fewer_or_more_samples_than_features(
    n_samples,
):
    rng = np.random.default_rng(6)
    a = rng.normal(size=(n_samples[0], 16)) @ rng.normal(size=(16, 16))
    b = rng.normal(0.3, 1.0, size=(n_samples[1], 16)) @ rng.normal(size=(16, 16))
    reference = frechet_distance_from_statistics(*feature_statistics(a), *feature_statistics(b))
    assert frechet_distance(a, b) == pytest.approx(reference, rel=1e-8)


def test_frechet_distance_refuses_a_single_sample_and_mismatched_widths():
    with pytest.raises(MetricError, match="at least 2 samples"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(MetricError, match="widths do not match"):
        frechet_distance(np.ones((4, 3)) * np.arange(4)[:, None], np.ones((4, 2)) * np.arange(4)[:, None])


def test_wasserstein_of_hand_computed_samples():
    assert wasserstein_1d([0.0], [1.0]) == pytest.approx(1.0)
    assert wasserstein_1d([0.0, 0.0, 1.0], [0.0, 1.0, 1.0]) == pytest.approx(1 / 3)
    # unequal sizes: mass 1/2 at 0 and 1/2 at 2 against 1/3 at each of 0, 1, 2 -> ∫|F−G| = 1/6 + 1/6
    assert wasserstein_1d([0.0, 2.0], [0.0, 1.0, 2.0]) == pytest.approx(1 / 3)


@pytest.mark.parametrize("sizes", [(400, 400), (300, 517)])
def test_wasserstein_equals_scipys_and_a_shift_moves_it_by_the_shift(sizes):
    rng = np.random.default_rng(3)
    u, v = rng.normal(0, 50, sizes[0]), rng.gamma(2.0, 30.0, sizes[1])
    assert wasserstein_1d(u, v) == pytest.approx(scipy.stats.wasserstein_distance(u, v), rel=1e-10)
    assert wasserstein_1d(u, u + 7.5) == pytest.approx(7.5)


def test_kl_divergence_of_hand_computed_histograms_and_its_asymmetry():
    p = [0.1, 0.2, 0.3, 0.9]  # three in the low bin, one in the high bin of (0, 1) with 2 bins
    q = [0.1, 0.9]
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kl_divergence(p, q, (0, 1), bins=2, pseudo_count=0) == pytest.approx(expected)
    assert kl_divergence(q, p, (0, 1), bins=2, pseudo_count=0) != pytest.approx(expected)
    assert kl_divergence(p, p, (0, 1), bins=2) == pytest.approx(0.0)


def test_kl_divergence_is_infinite_without_smoothing_and_finite_with_it_when_q_misses_a_bin():
    p, q = [0.1, 0.9], [0.1, 0.2]
    assert kl_divergence(p, q, (0, 1), bins=2, pseudo_count=0) == math.inf
    smoothed = kl_divergence(p, q, (0, 1), bins=2, pseudo_count=1)
    # histograms (1+1, 1+1)/4 and (2+1, 0+1)/4
    assert smoothed == pytest.approx(0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25))


def test_kl_divergence_counts_values_outside_the_range_in_the_end_bins():
    assert kl_divergence(
        [-500.0, 900.0], [-250.0, 350.0], (-250, 350), bins=4, pseudo_count=0
    ) == pytest.approx(0)


def test_mutual_information_of_a_variable_with_itself_is_its_entropy_and_survives_a_remapping():
    x = np.repeat([0.25, 0.75], 500)
    assert mutual_information(x, x, (0, 1), bins=2) == pytest.approx(math.log(2))
    assert mutual_information(x, 1 - x, (0, 1), bins=2) == pytest.approx(math.log(2))


def test_mutual_information_of_independent_values_is_within_the_plug_in_bias():
    rng = np.random.default_rng(4)
    n, bins = 20000, 16
    estimate = mutual_information(rng.random(n), rng.random(n), (0, 1), bins=bins)
    assert 0 <= estimate < 2 * (bins - 1) ** 2 / (2 * n)


def test_mutual_information_refuses_unpaired_values():
    with pytest.raises(MetricError, match="paired"):
        mutual_information(np.zeros(3), np.zeros(4), (0, 1))


def test_mutual_information_equals_the_joint_histogram_definition_of_correlated_values():
    rng = np.random.default_rng(5)
    x = rng.normal(0, 150, 5000)
    y = 0.6 * x + rng.normal(0, 80, 5000)
    low, high = -250.0, 350.0
    joint, _, _ = np.histogram2d(np.clip(x, low, high), np.clip(y, low, high), 16, [(low, high), (low, high)])
    p = joint / joint.sum()
    outer = p.sum(axis=1, keepdims=True) * p.sum(axis=0, keepdims=True)
    reference = np.sum(p[p > 0] * np.log(p[p > 0] / outer[p > 0]))
    assert mutual_information(x, y, (low, high), bins=16) == pytest.approx(reference, rel=1e-9)
