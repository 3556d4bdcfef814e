"""Detection metrics: how well anomaly scores separate abnormal from normal slices, cases and voxels.

Pure numpy, exact, and written to agree with the conventions the field reports in:

- ROC AUC is the Mann-Whitney statistic: the probability that a random positive outscores a random negative,
  a tie counting one half. It equals the trapezoidal area under the ROC curve when tied scores form one point.
- Average precision is the step-wise sum ``Σ (R_n − R_{n−1}) P_n`` over descending distinct thresholds, as
  scikit-learn defines it (no interpolation), which is what MOOD reports.
- Best Dice follows BMAD: one threshold for all voxels pooled, chosen to maximise Dice.

Every curve-type metric is computed from one :class:`RankCounts` table (distinct thresholds, descending, with
the cumulative true and false positives at ``score >= threshold``). :func:`RankCounts.from_scores` builds it
exactly by sorting; :class:`VoxelScoreHistogram` builds it from fixed-width bins, streaming case after case,
so that voxel-level metrics over many volumes need memory for the bins only and never for the voxels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from AnomalyScoutLib.errors import MetricError

__all__ = [
    "BestDice",
    "ConfidenceInterval",
    "RankCounts",
    "VoxelScoreHistogram",
    "average_precision",
    "best_dice",
    "bootstrap_ci",
    "dice",
    "precision_recall_curve",
    "roc_auc",
    "roc_curve",
    "spearman",
]


class BestDice(NamedTuple):
    """The highest Dice over all thresholds, and the threshold reaching it (``score >= threshold``)."""

    dice: float
    threshold: float


@dataclass(frozen=True)
class ConfidenceInterval:
    """A point estimate and its percentile-bootstrap interval."""

    estimate: float
    low: float
    high: float
    confidence: float
    n_resamples: int


def _as_binary_labels(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """Flatten ``labels`` to bool; values other than 0/1 are refused so a label map is not binarised."""
    array = np.asarray(labels).ravel()
    if array.dtype != bool:
        if array.size and not np.isin(array, (0, 1)).all():
            raise MetricError(f"`{name}` must be binary (0/1 or bool); found values {np.unique(array)[:5]}")
        array = array.astype(bool)
    return array


def _as_finite_scores(scores: np.ndarray, size: int, name: str = "scores") -> np.ndarray:
    array = np.asarray(scores, dtype=np.float64).ravel()
    if array.size != size:
        raise MetricError(f"`{name}` has {array.size} values but the labels have {size}")
    if not np.isfinite(array).all():
        raise MetricError(f"`{name}` contains NaN or infinite values")
    return array


@dataclass(frozen=True)
class RankCounts:
    """Cumulative confusion counts at every distinct threshold, thresholds in descending order.

    ``true_positives[i]`` and ``false_positives[i]`` count the positives and negatives with
    ``score >= thresholds[i]``; tied scores share one row, which is what makes the metrics below tie-exact.
    """

    thresholds: np.ndarray
    true_positives: np.ndarray
    false_positives: np.ndarray

    @classmethod
    def from_scores(cls, labels: np.ndarray, scores: np.ndarray) -> RankCounts:
        """Exact counts by one sort (O(n log n) time, O(n) memory)."""
        positive = _as_binary_labels(labels)
        values = _as_finite_scores(scores, positive.size)
        order = np.argsort(values, kind="stable")[::-1]
        values = values[order]
        positive = positive[order]
        last_of_tie = (
            np.r_[np.flatnonzero(np.diff(values)), values.size - 1] if values.size else np.array([], int)
        )
        true_positives = np.cumsum(positive, dtype=np.int64)[last_of_tie]
        return cls(values[last_of_tie], true_positives, last_of_tie.astype(np.int64) + 1 - true_positives)

    @property
    def n_positive(self) -> int:
        return int(self.true_positives[-1]) if self.true_positives.size else 0

    @property
    def n_negative(self) -> int:
        return int(self.false_positives[-1]) if self.false_positives.size else 0

    def require_both_classes(self, metric: str) -> None:
        """Raise :class:`MetricError` when ``metric`` is undefined because one class is absent."""
        if self.n_positive == 0 or self.n_negative == 0:
            raise MetricError(
                f"{metric} needs both positives and negatives; got {self.n_positive} positive and "
                f"{self.n_negative} negative samples"
            )

    def roc_auc(self) -> float:
        """Trapezoidal area under the ROC curve: the Mann-Whitney statistic with ties counting one half."""
        self.require_both_classes("ROC AUC")
        tpr = np.r_[0, self.true_positives] / self.n_positive
        fpr = np.r_[0, self.false_positives] / self.n_negative
        return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2)

    def precision_recall(self) -> tuple[np.ndarray, np.ndarray]:
        """Precision and recall at each threshold (descending); needs at least one positive."""
        if self.n_positive == 0:
            raise MetricError("precision and recall need at least one positive sample")
        predicted_positives = self.true_positives + self.false_positives
        return self.true_positives / predicted_positives, self.true_positives / self.n_positive

    def average_precision(self) -> float:
        """Step-wise average precision (scikit-learn's): recall increments weighted by precision."""
        precision, recall = self.precision_recall()
        return float(np.sum(np.diff(np.r_[0, recall]) * precision))

    def best_dice(self) -> BestDice:
        """BMAD's best Dice: maximise ``2 TP / (2 TP + FP + FN) = 2 TP / (TP + FP + P)`` over thresholds."""
        if self.n_positive == 0:
            raise MetricError("best Dice needs at least one positive voxel")
        dices = 2 * self.true_positives / (self.true_positives + self.false_positives + self.n_positive)
        best = int(np.argmax(dices))
        return BestDice(float(dices[best]), float(self.thresholds[best]))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; higher scores are meant to be more anomalous (label 1).

    Example:
        >>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        0.75
    """
    return RankCounts.from_scores(labels, scores).roc_auc()


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision, step-wise as scikit-learn and the MOOD challenge compute it."""
    return RankCounts.from_scores(labels, scores).average_precision()


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold, starting at (0, 0) for threshold +inf.

    Every distinct score is kept (no dropping of collinear points), so that curves of different methods can be
    compared point by point.

    Returns:
        ``(fpr, tpr, thresholds)``, thresholds descending.
    """
    counts = RankCounts.from_scores(labels, scores)
    counts.require_both_classes("ROC curve")
    return (
        np.r_[0, counts.false_positives] / counts.n_negative,
        np.r_[0, counts.true_positives] / counts.n_positive,
        np.r_[np.inf, counts.thresholds],
    )


def precision_recall_curve(
    labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at every distinct threshold, in scikit-learn's layout (version 1.1 and later).

    Thresholds ascend; precision and recall have one more element, the conventional end point (1, 0).

    Returns:
        ``(precision, recall, thresholds)``.
    """
    counts = RankCounts.from_scores(labels, scores)
    precision, recall = counts.precision_recall()
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], counts.thresholds[::-1]


def best_dice(labels: np.ndarray, scores: np.ndarray) -> BestDice:
    """Exact best Dice over all distinct thresholds of ``scores`` against the binary ``labels`` (one sort).

    For voxels of many volumes use :class:`VoxelScoreHistogram`, which needs no memory per voxel.
    """
    return RankCounts.from_scores(labels, scores).best_dice()


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap ``2|A∩B| / (|A| + |B|)`` of two binary masks; 1.0 when both are empty (nothing to find,
    and nothing was found), the convention of the segmentation-failure benchmarks."""
    predicted = _as_binary_labels(prediction, "prediction")
    actual = _as_binary_labels(truth, "truth")
    if predicted.size != actual.size:
        raise MetricError(f"`prediction` has {predicted.size} voxels but `truth` has {actual.size}")
    total = int(predicted.sum()) + int(actual.sum())
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(predicted & actual)) / total


class VoxelScoreHistogram:
    """Streaming voxel-level AP, AUROC and best Dice over many volumes, in memory for the bins only.

    Scores are clipped to ``[low, high]`` (MOOD clips voxel scores to [0, 1]) and counted in ``bins``
    equal-width bins, separately for positive and negative voxels. Each bin then acts as one tied score (its
    lower edge), so the metrics are exact for scores already quantised to the bins and otherwise differ from
    the exact ones only by the ordering inside a bin (with the default 2**16 bins, well below 1e-3 in
    practice).

    Example:
        >>> histogram = VoxelScoreHistogram()
        >>> for heatmap, lesion_mask in cases:          # doctest: +SKIP
        ...     histogram.add(heatmap, lesion_mask)
        >>> histogram.average_precision()               # doctest: +SKIP
    """

    #: Voxels binned per step: bounds the temporary index array to tens of MB whatever the volume size.
    CHUNK = 1 << 22

    def __init__(self, bins: int = 1 << 16, low: float = 0.0, high: float = 1.0) -> None:
        if bins < 1:
            raise MetricError(f"`bins` must be at least 1, got {bins}")
        if not high > low:
            raise MetricError(f"`high` ({high}) must be greater than `low` ({low})")
        self.bins = int(bins)
        self.low = float(low)
        self.high = float(high)
        self.positive_counts = np.zeros(self.bins, np.int64)
        self.negative_counts = np.zeros(self.bins, np.int64)

    def add(self, scores: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Count the voxels of one case; ``mask`` (optional, same shape) restricts them, e.g. to the body."""
        scores = np.asarray(scores)
        labels = np.asarray(labels)
        if scores.shape != labels.shape:
            raise MetricError(f"`scores` has shape {scores.shape} but `labels` has shape {labels.shape}")
        if mask is not None:
            mask = _as_binary_labels(mask, "mask").reshape(scores.shape)
            scores, labels = scores[mask], labels[mask]
        flat_scores, flat_labels = scores.ravel(), labels.ravel()
        scale = self.bins / (self.high - self.low)
        for start in range(0, flat_scores.size, self.CHUNK):
            chunk = np.asarray(flat_scores[start : start + self.CHUNK], dtype=np.float64)
            positive = _as_binary_labels(flat_labels[start : start + self.CHUNK])
            chunk = _as_finite_scores(chunk, positive.size)
            index = np.clip(((chunk - self.low) * scale).astype(np.int64), 0, self.bins - 1)
            self.positive_counts += np.bincount(index[positive], minlength=self.bins)
            self.negative_counts += np.bincount(index[~positive], minlength=self.bins)

    def rank_counts(self) -> RankCounts:
        """The counts table with one row per non-empty bin, highest bin first."""
        occupied = np.flatnonzero(self.positive_counts + self.negative_counts)[::-1]
        lower_edges = self.low + occupied * (self.high - self.low) / self.bins
        return RankCounts(
            lower_edges,
            np.cumsum(self.positive_counts[occupied]),
            np.cumsum(self.negative_counts[occupied]),
        )

    def average_precision(self) -> float:
        return self.rank_counts().average_precision()

    def roc_auc(self) -> float:
        return self.rank_counts().roc_auc()

    def best_dice(self) -> BestDice:
        return self.rank_counts().best_dice()


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, tied values sharing their mean rank (as Spearman's and Mann-Whitney's statistics do)."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], values.size]
    mean_rank_of_group = (starts + ends + 1) / 2.0
    ranks = np.empty(values.size, np.float64)
    ranks[order] = np.repeat(mean_rank_of_group, ends - starts)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson's of average ranks), e.g. of a score against 1 − Dice."""
    first = _as_finite_scores(x, np.asarray(x).size, "x")
    second = _as_finite_scores(y, first.size, "y")
    if first.size < 2:
        raise MetricError(f"Spearman correlation needs at least 2 pairs, got {first.size}")
    rank_x = _average_ranks(first) - (first.size + 1) / 2.0
    rank_y = _average_ranks(second) - (first.size + 1) / 2.0
    denominator = np.sqrt(np.sum(rank_x**2) * np.sum(rank_y**2))
    if denominator == 0:
        raise MetricError("Spearman correlation is undefined when one of the inputs is constant")
    return float(np.sum(rank_x * rank_y) / denominator)


def bootstrap_ci(
    statistic: Callable[..., float],
    *samples: np.ndarray,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    strata: np.ndarray | None = None,
    seed: int = 0,
) -> ConfidenceInterval:
    """Percentile bootstrap of ``statistic(*samples)``, resampling the units (rows) of all samples together.

    Args:
        statistic: called with resampled copies of ``samples`` (e.g. :func:`roc_auc` with labels and scores).
        samples: arrays whose first axis indexes the same units (cases, slices); they are resampled jointly so
            that pairs stay pairs.
        n_resamples: number of bootstrap resamples.
        confidence: two-sided coverage of the interval, e.g. 0.95.
        strata: optional group of each unit; units are then resampled within each group, keeping the group
            sizes. Pass the labels when bootstrapping AUROC so that no resample lacks a class.
        seed: seed of the resampling, so that reported intervals can be reproduced.

    Resamples on which the statistic is undefined (:class:`MetricError`, e.g. one class only without
    ``strata``) are left out; if more than half are, the interval is refused as meaningless.
    """
    if not samples:
        raise MetricError("bootstrap_ci needs at least one sample array")
    arrays = [np.asarray(sample) for sample in samples]
    n_units = len(arrays[0])
    if any(len(array) != n_units for array in arrays):
        raise MetricError(f"all samples must have the same length; got {[len(a) for a in arrays]}")
    if not 0 < confidence < 1:
        raise MetricError(f"`confidence` must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise MetricError(f"`n_resamples` must be at least 1, got {n_resamples}")
    groups = _strata_indices(strata, n_units)
    rng = np.random.default_rng(seed)
    estimates = []
    for _ in range(n_resamples):
        index = np.concatenate([rng.choice(group, size=group.size, replace=True) for group in groups])
        try:
            estimates.append(float(statistic(*(array[index] for array in arrays))))
        except MetricError:
            continue
    if len(estimates) * 2 < n_resamples:
        raise MetricError(
            f"the statistic was undefined on {n_resamples - len(estimates)} of {n_resamples} resamples; "
            "pass `strata` (e.g. the labels) to keep every class in every resample"
        )
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(estimates, [tail, 100 - tail])
    return ConfidenceInterval(float(statistic(*arrays)), float(low), float(high), confidence, len(estimates))


def _strata_indices(strata: np.ndarray | Sequence | None, n_units: int) -> list[np.ndarray]:
    if strata is None:
        return [np.arange(n_units)]
    groups = np.asarray(strata).ravel()
    if groups.size != n_units:
        raise MetricError(f"`strata` has {groups.size} values but the samples have {n_units} units")
    return [np.flatnonzero(groups == value) for value in np.unique(groups)]
