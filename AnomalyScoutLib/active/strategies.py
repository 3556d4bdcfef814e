"""Which unlabelled items (slices or cases) to send to an annotator next.

All strategies share one contract, :func:`select`: from a pool of ``n`` items, of which ``labelled`` are
already annotated, pick at most ``budget`` others, never the same item twice, in the order they were chosen,
deterministically for a given ``seed``. Each strategy looks at one or two *signals* of the pool
(:class:`PoolSignals`):

* ``random``: a seeded uniform draw. The baseline that the literature finds hard to beat.
* ``anomaly``: the highest anomaly scores (calibrated percentiles from the StyleGAN2 model).
* ``diversity``: k-center greedy (Sener & Savarese 2018) on the encoder's latent codes: each pick is the
  item farthest from everything labelled or picked so far, so the batch covers the latent space.
* ``uncertainty``: the highest entropy of the segmentation model (MC-dropout or test-time augmentation).
* ``coreset``: k-center greedy on the segmentation model's own features.
* ``hybrid`` (**anomaly-weighted diversity**): k-center greedy where an item's distance to the nearest
  chosen item is multiplied by an anomaly weight ``w = q ** alpha``, ``q`` being the item's anomaly rank in
  the pool mapped to (0, 1]. The first pick (with nothing labelled) is the most anomalous item. Why this
  design: pure ``anomaly`` spends the whole budget on near-copies of one lesion (neighbouring slices of the
  same case), and pure ``diversity`` treats a rare anomalous appearance like any other outlier of the
  latent space. Weighting the k-center gain keeps both: an anomalous item is picked first, then its
  neighbours' gain collapses (their distance to it is small) and the next pick is the most anomalous item of
  a *different* region. Using ranks makes the weight independent of the score's scale; ``alpha`` trades the
  two (0 is ``diversity``; large values approach ``anomaly`` with duplicates suppressed).

Every selection also reports each pick's *gain* (the value that won it: score, entropy, distance or weighted
distance) so that a worklist can say why an item is on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from AnomalyScoutLib.errors import ConfigError

__all__ = ["STRATEGIES", "PoolSignals", "Selection", "select"]

#: Strategy names, as the command line and the benchmark spell them.
STRATEGIES: tuple[str, ...] = ("random", "anomaly", "diversity", "hybrid", "uncertainty", "coreset")

#: The signals each strategy needs.
_NEEDS: dict[str, tuple[str, ...]] = {
    "random": (),
    "anomaly": ("anomaly",),
    "diversity": ("latents",),
    "hybrid": ("anomaly", "latents"),
    "uncertainty": ("uncertainty",),
    "coreset": ("features",),
}


@dataclass(frozen=True)
class PoolSignals:
    """What the strategies may look at, one row per pool item; a strategy refuses a signal it needs and lacks.

    Attributes:
        size: number of items in the pool.
        anomaly: (n,) anomaly score or percentile, higher is more anomalous.
        latents: (n, d) encoder latent codes.
        uncertainty: (n,) segmentation entropy, higher is less certain.
        features: (n, d) segmentation-model features.
    """

    size: int
    anomaly: np.ndarray | None = None
    latents: np.ndarray | None = None
    uncertainty: np.ndarray | None = None
    features: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ConfigError(f"pool size must not be negative, got {self.size}")
        for name, ndim in (("anomaly", 1), ("latents", 2), ("uncertainty", 1), ("features", 2)):
            value = getattr(self, name)
            if value is None:
                continue
            value = np.asarray(value, dtype=np.float64)
            if value.ndim != ndim or len(value) != self.size:
                raise ConfigError(
                    f"signal `{name}` must have {ndim} dimension(s) and {self.size} rows, "
                    f"got shape {value.shape}"
                )
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class Selection:
    """The chosen pool indices in the order they were chosen, and the gain that won each of them."""

    indices: np.ndarray
    gains: np.ndarray


def _ranked_weights(scores: np.ndarray, alpha: float) -> np.ndarray:
    """Anomaly rank mapped to (0, 1] (1 = most anomalous), to the power ``alpha``; NaN ranks lowest."""
    order = np.argsort(np.nan_to_num(scores, nan=-np.inf), kind="stable")
    quantile = np.empty(len(scores))
    quantile[order] = (np.arange(len(scores)) + 1) / len(scores)
    return quantile**alpha


def _k_center_greedy(
    points: np.ndarray, taken: np.ndarray, budget: int, weights: np.ndarray, first: int
) -> Selection:
    """Greedy weighted k-center: repeatedly take the free item maximising weight × distance to the taken set.

    ``first`` is the pick used when nothing is taken yet (no distance is defined then).
    """
    taken = taken.copy()
    nearest = np.full(len(points), np.inf)
    for index in np.flatnonzero(taken):
        nearest = np.minimum(nearest, np.linalg.norm(points - points[index], axis=1))
    picks, gains = [], []
    for _ in range(budget):
        if not taken.any():
            pick, gain = first, np.inf
        else:
            gain_all = np.where(taken, -np.inf, weights * nearest)
            pick = int(np.argmax(gain_all))
            gain = float(gain_all[pick])
        picks.append(pick)
        gains.append(gain)
        taken[pick] = True
        nearest = np.minimum(nearest, np.linalg.norm(points - points[pick], axis=1))
    return Selection(np.asarray(picks, dtype=np.int64), np.asarray(gains))


def _top(scores: np.ndarray, free: np.ndarray, budget: int) -> Selection:
    """The ``budget`` highest-scoring free items, ties broken by index; NaN scores come last."""
    candidates = np.flatnonzero(free)
    key = np.nan_to_num(scores[candidates], nan=-np.inf)
    chosen = candidates[np.argsort(-key, kind="stable")[:budget]]
    return Selection(chosen.astype(np.int64), scores[chosen])


def select(
    strategy: str,
    signals: PoolSignals,
    budget: int,
    *,
    labelled: Iterable[int] = (),
    seed: int = 0,
    alpha: float = 1.0,
) -> Selection:
    """Choose up to ``budget`` unlabelled items of the pool with ``strategy``.

    Args:
        strategy: one of :data:`STRATEGIES`.
        signals: the pool's size and the signals the strategy needs.
        budget: how many items to pick; fewer are returned when fewer are unlabelled.
        labelled: indices already annotated: never picked, and the starting centres of k-center strategies.
        seed: seeds the random draw and the first k-center pick of ``diversity``/``coreset``.
        alpha: the anomaly weight's exponent in ``hybrid`` (0 = pure diversity).

    Raises:
        ConfigError: unknown strategy, negative budget or alpha, a labelled index outside the pool, or a
            signal the strategy needs is missing.
    """
    if strategy not in _NEEDS:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    missing = [name for name in _NEEDS[strategy] if getattr(signals, name) is None]
    if missing:
        raise ConfigError(f"strategy {strategy!r} needs the pool signal(s) {', '.join(missing)}")
    if budget < 0:
        raise ConfigError(f"budget must not be negative, got {budget}")
    if alpha < 0:
        raise ConfigError(f"hybrid exponent alpha must not be negative, got {alpha}")
    taken = np.zeros(signals.size, dtype=bool)
    labelled = np.asarray(list(labelled), dtype=np.int64)
    if labelled.size and (labelled.min() < 0 or labelled.max() >= signals.size):
        raise ConfigError(
            f"labelled indices must lie in [0, {signals.size}), got {labelled.min()}..{labelled.max()}"
        )
    taken[labelled] = True
    budget = min(budget, int((~taken).sum()))
    rng = np.random.default_rng(seed)
    if budget == 0:
        return Selection(np.zeros(0, dtype=np.int64), np.zeros(0))
    if strategy == "random":
        chosen = rng.permutation(np.flatnonzero(~taken))[:budget]
        return Selection(chosen.astype(np.int64), np.full(budget, np.nan))
    if strategy == "anomaly":
        return _top(signals.anomaly, ~taken, budget)
    if strategy == "uncertainty":
        return _top(signals.uncertainty, ~taken, budget)
    if strategy == "hybrid":
        weights = _ranked_weights(signals.anomaly, alpha)
        first = int(np.argmax(np.where(taken, -np.inf, weights)))
        return _k_center_greedy(signals.latents, taken, budget, weights, first)
    points = signals.latents if strategy == "diversity" else signals.features
    first = int(rng.choice(np.flatnonzero(~taken)))
    return _k_center_greedy(points, taken, budget, np.ones(signals.size), first)
