"""Detection metrics against hand-computed cases and known identities (no scikit-learn needed)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.stats

from AnomalyScoutLib.errors import AnomalyScoutError, MetricError
from AnomalyScoutLib.metrics import (
    VoxelScoreHistogram,
    average_precision,
    best_dice,
    bootstrap_ci,
    dice,
    precision_recall_curve,
    roc_auc,
    roc_curve,
    spearman,
)

# The example of scikit-learn's documentation, worked by hand: AUROC 3/4, AP 0.5·1 + 0.5·2/3.
DOC_LABELS = np.array([0, 0, 1, 1])
DOC_SCORES = np.array([0.1, 0.4, 0.35, 0.8])


def pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """The Mann-Whitney definition written out: wins of positives over negatives, ties counting one half."""
    positives, negatives = scores[labels == 1], scores[labels == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(positives, negatives))
    return wins / (positives.size * negatives.size)


def test_roc_auc_of_the_documented_example_is_three_quarters():
    assert roc_auc(DOC_LABELS, DOC_SCORES) == pytest.approx(0.75)


def test_roc_auc_counts_a_tie_between_a_positive_and_a_negative_as_one_half():
    # pairs: (0.2, 0.2) tie, (0.2, 0.1) win, 0.9 wins twice, (0.2, 0.2) tie, (0.2, 0.1) win -> 5 of 6
    assert roc_auc([0, 1, 1, 0, 1], [0.2, 0.2, 0.9, 0.1, 0.2]) == pytest.approx(5 / 6)
    assert roc_auc([1, 0, 1, 0], [0.5] * 4) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_equals_the_pairwise_mann_whitney_count_on_heavily_tied_scores(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    scores = rng.integers(0, 6, 60).astype(float)  # six values: ties everywhere
    assert roc_auc(labels, scores) == pytest.approx(pairwise_auc(labels, scores))


def test_roc_auc_is_symmetric_under_score_negation_and_invariant_to_monotone_maps():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    scores = rng.normal(labels * 0.7, 1.0)
    auc = roc_auc(labels, scores)
    assert roc_auc(labels, -scores) == pytest.approx(1 - auc)
    assert roc_auc(labels, np.exp(3 * scores)) == pytest.approx(auc)


def test_roc_curve_starts_at_the_origin_ends_at_one_and_its_area_is_the_auc():
    fpr, tpr, thresholds = roc_curve(DOC_LABELS, DOC_SCORES)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(thresholds, [np.inf, 0.8, 0.4, 0.35, 0.1])
    assert np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2) == pytest.approx(0.75)


def test_average_precision_of_the_documented_example():
    assert average_precision(DOC_LABELS, DOC_SCORES) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_average_precision_treats_tied_scores_as_one_threshold():
    # one threshold catching both: precision 1/2 at recall 1
    assert average_precision([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    # a tie broken in the positive's favour would give 1.0: the order of the input must not matter
    assert average_precision([0, 1], [0.5, 0.5]) == pytest.approx(0.5)


def test_average_precision_is_one_for_a_perfect_ranking_and_near_the_prevalence_for_noise():
    labels = np.r_[np.ones(10), np.zeros(90)]
    assert average_precision(labels, np.r_[np.full(10, 2.0), np.zeros(90)]) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    noise_labels = rng.random(20000) < 0.1
    assert average_precision(noise_labels, rng.random(20000)) == pytest.approx(0.1, abs=0.02)


def test_precision_recall_curve_follows_the_scikit_learn_layout():
    precision, recall, thresholds = precision_recall_curve(DOC_LABELS, DOC_SCORES)
    np.testing.assert_allclose(precision, [0.5, 2 / 3, 0.5, 1, 1])
    np.testing.assert_allclose(recall, [1, 1, 0.5, 0.5, 0])
    np.testing.assert_allclose(thresholds, [0.1, 0.35, 0.4, 0.8])


def test_best_dice_picks_the_threshold_of_the_hand_computed_maximum():
    # thresholds 0.9, 0.8, 0.7, 0.2, 0.1 give Dice 2/4, 4/5, 4/6, 4/7, 6/8
    result = best_dice([1, 1, 0, 0, 1], [0.9, 0.8, 0.7, 0.2, 0.1])
    assert result.dice == pytest.approx(0.8)
    assert result.threshold == pytest.approx(0.8)


def test_best_dice_equals_the_best_dice_of_thresholding_at_every_distinct_score():
    rng = np.random.default_rng(3)
    labels = rng.random(300) < 0.2
    scores = np.round(rng.normal(labels * 1.0, 1.0), 1)
    brute_force = max(dice(scores >= t, labels) for t in np.unique(scores))
    assert best_dice(labels, scores).dice == pytest.approx(brute_force)


def test_dice_of_hand_made_masks_and_of_two_empty_masks():
    assert dice([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.5)
    assert dice(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    assert dice([0, 0], [1, 0]) == 0.0


def quantised_case(rng: np.random.Generator, bins: int, shape=(4, 9, 9)):
    """Scores at bin centres (exactly representable in the histogram) and a sparse lesion mask."""
    labels = rng.random(shape) < 0.15
    scores = (np.floor(np.clip(rng.normal(0.3 + 0.3 * labels, 0.2), 0, 0.999) * bins) + 0.5) / bins
    return scores, labels


def test_voxel_histogram_metrics_equal_the_exact_ones_for_scores_on_the_bin_grid_streamed_in_chunks(
    monkeypatch,
):
    monkeypatch.setattr(VoxelScoreHistogram, "CHUNK", 37)
    rng = np.random.default_rng(5)
    cases = [quantised_case(rng, bins=64) for _ in range(3)]
    histogram = VoxelScoreHistogram(bins=64)
    for scores, labels in cases:
        histogram.add(scores, labels)
    all_scores = np.concatenate([s.ravel() for s, _ in cases])
    all_labels = np.concatenate([lab.ravel() for _, lab in cases])
    assert histogram.average_precision() == pytest.approx(average_precision(all_labels, all_scores))
    assert histogram.roc_auc() == pytest.approx(roc_auc(all_labels, all_scores))
    assert histogram.best_dice().dice == pytest.approx(best_dice(all_labels, all_scores).dice)


def test_voxel_histogram_clips_scores_to_its_range_as_mood_does():
    rng = np.random.default_rng(6)
    labels = rng.random(500) < 0.2
    scores = rng.normal(0.5 + labels, 0.8)  # many values outside [0, 1]
    histogram = VoxelScoreHistogram(bins=1 << 12)
    histogram.add(scores, labels)
    assert histogram.average_precision() == pytest.approx(
        average_precision(labels, np.clip(scores, 0, 1)), abs=2e-3
    )


def test_voxel_histogram_is_close_to_exact_on_continuous_scores_and_honours_the_mask():
    rng = np.random.default_rng(7)
    labels = rng.random((20, 30, 30)) < 0.05
    scores = np.clip(rng.normal(0.3 + 0.25 * labels, 0.15), 0, 1)
    mask = rng.random(labels.shape) < 0.7
    histogram = VoxelScoreHistogram()
    histogram.add(scores, labels, mask=mask)
    assert histogram.average_precision() == pytest.approx(
        average_precision(labels[mask], scores[mask]), abs=1e-3
    )
    assert histogram.roc_auc() == pytest.approx(roc_auc(labels[mask], scores[mask]), abs=1e-4)


def test_spearman_matches_the_rank_definition_with_ties():
    x = np.array([1.0, 2, 3, 4, 5, 6])
    y = np.array([5.0, 6, 7, 8, 7, 1])
    assert spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic)
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)
    assert spearman(x, -(x**3)) == pytest.approx(-1.0)


def test_bootstrap_interval_is_reproducible_brackets_the_estimate_and_has_the_expected_width():
    rng = np.random.default_rng(8)
    values = rng.normal(0.0, 1.0, 400)
    interval = bootstrap_ci(np.mean, values, n_resamples=500, seed=3)
    assert interval == bootstrap_ci(np.mean, values, n_resamples=500, seed=3)
    assert interval.low < interval.estimate < interval.high
    # the normal-theory width 2 · 1.96 · σ/√n = 0.196
    assert interval.high - interval.low == pytest.approx(2 * 1.96 / 20, rel=0.25)


def test_stratified_bootstrap_keeps_both_classes_where_plain_resampling_loses_them():
    labels = np.r_[1, np.zeros(39, int)]
    scores = np.r_[0.9, np.linspace(0, 1, 39)]
    # about (39/40)^40 ≈ 36 % of plain resamples miss the only positive: those are left out
    assert bootstrap_ci(roc_auc, labels, scores, n_resamples=200).n_resamples < 180
    interval = bootstrap_ci(roc_auc, labels, scores, n_resamples=200, strata=labels)
    assert interval.n_resamples == 200
    assert interval.low <= interval.estimate <= interval.high


def test_bootstrap_refuses_an_interval_when_the_statistic_is_mostly_undefined():
    def distinct_count(values: np.ndarray) -> float:
        """Defined only without repeated units, which almost every resample of 8 units has."""
        if np.unique(values).size < values.size:
            raise MetricError("repeated units")
        return float(values.size)

    with pytest.raises(MetricError, match="undefined on"):
        bootstrap_ci(distinct_count, np.arange(8), n_resamples=50)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: roc_auc([1, 1, 1], [0.1, 0.2, 0.3]), "both positives and negatives"),
        (lambda: average_precision([0, 0], [0.1, 0.2]), "at least one positive"),
        (lambda: roc_auc([0, 2, 1], [0.1, 0.2, 0.3]), "binary"),
        (lambda: roc_auc([0, 1], [0.1, np.nan]), "NaN"),
        (lambda: roc_auc([0, 1, 1], [0.1, 0.2]), "3"),
        (lambda: dice([0, 1], [0, 1, 1]), "prediction"),
        (lambda: spearman([1, 1, 1], [1, 2, 3]), "constant"),
        (lambda: VoxelScoreHistogram(low=1, high=0), "high"),
        (lambda: VoxelScoreHistogram().add(np.zeros(3), np.zeros(4)), "shape"),
        (lambda: bootstrap_ci(np.mean, np.zeros(3), np.zeros(4)), "same length"),
    ],
)
def test_undefined_or_malformed_inputs_raise_a_metric_error_that_says_why(call, message):
    with pytest.raises(MetricError, match=message) as raised:
        call()
    assert isinstance(raised.value, AnomalyScoutError)
