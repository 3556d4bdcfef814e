"""The shared contract of the selection strategies, and what each one prefers on constructed pools."""

from __future__ import annotations

import numpy as np
import pytest

from AnomalyScoutLib.active.strategies import STRATEGIES, PoolSignals, select
from AnomalyScoutLib.errors import ConfigError


def _signals(n: int = 40, seed: int = 0) -> PoolSignals:
    rng = np.random.default_rng(seed)
    return PoolSignals(
        size=n,
        anomaly=rng.random(n),
        latents=rng.normal(size=(n, 3)),
        uncertainty=rng.random(n),
        features=rng.normal(size=(n, 4)),
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_respects_the_budget_never_repeats_and_never_picks_a_labelled_item(strategy):
    labelled = [0, 5, 7]
    selection = select(strategy, _signals(), 10, labelled=labelled, seed=1)
    assert len(selection.indices) == 10 == len(selection.gains)
    assert len(set(selection.indices.tolist())) == 10
    assert not set(selection.indices.tolist()) & set(labelled)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_budget_larger_than_the_unlabelled_pool_returns_every_unlabelled_item(strategy):
    selection = select(strategy, _signals(n=6), 50, labelled=[2])
    assert sorted(selection.indices.tolist()) == [0, 1, 3, 4, 5]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_is_deterministic_for_a_seed(strategy):
    first = select(strategy, _signals(), 8, seed=3)
    second = select(strategy, _signals(), 8, seed=3)
    np.testing.assert_array_equal(first.indices, second.indices)


def test_random_draws_differ_between_seeds():
    draws = {tuple(select("random", _signals(), 8, seed=seed).indices) for seed in range(4)}
    assert len(draws) > 1


def test_anomaly_and_uncertainty_take_the_highest_values_in_order():
    signals = PoolSignals(size=5, anomaly=np.array([0.1, 0.9, np.nan, 0.5, 0.7]), uncertainty=np.arange(5.0))
    assert select("anomaly", signals, 3).indices.tolist() == [1, 4, 3]
    assert select("uncertainty", signals, 2).indices.tolist() == [4, 3]


def _three_clusters() -> np.ndarray:
    """Ten points each around (0, 0), (10, 0) and (0, 10)."""
    rng = np.random.default_rng(0)
    centres = np.repeat(np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]), 10, axis=0)
    return centres + rng.normal(0, 0.1, centres.shape)


@pytest.mark.parametrize(("strategy", "signal"), [("diversity", "latents"), ("coreset", "features")])
def test_k_center_strategies_cover_every_cluster(strategy, signal):
    signals = PoolSignals(size=30, **{signal: _three_clusters()})
    for seed in range(3):
        picked = select(strategy, signals, 3, seed=seed).indices
        assert sorted(picked // 10) == [0, 1, 2]


def test_labelled_items_count_as_centres_so_their_cluster_is_not_picked_again():
    signals = PoolSignals(size=30, latents=_three_clusters())
    picked = select("diversity", signals, 2, labelled=[0], seed=0).indices
    assert sorted(picked // 10) == [1, 2]


def test_hybrid_prefers_items_that_are_both_anomalous_and_unlike_those_already_chosen():
    # 0-4: one anomaly seen on five near-identical slices (highest scores); 5-9: a second, different anomaly
    # (high scores); 10-29: normal slices near the origin; 30: a normal but far outlier of the latent space.
    rng = np.random.default_rng(0)
    latents = np.concatenate(
        [
            np.array([5.0, 0.0]) + rng.normal(0, 0.05, (5, 2)),
            np.array([0.0, 5.0]) + rng.normal(0, 0.05, (5, 2)),
            rng.normal(0, 0.5, (20, 2)),
            np.array([[-12.0, -12.0]]),
        ]
    )
    anomaly = np.concatenate([np.full(5, 0.99), np.full(5, 0.95), rng.uniform(0, 0.5, 20), [0.1]])
    signals = PoolSignals(size=31, anomaly=anomaly, latents=latents)

    hybrid = select("hybrid", signals, 2).indices
    assert sorted(hybrid // 5) == [0, 1]  # one of each anomaly
    assert set(select("anomaly", signals, 2).indices // 5) == {0}  # near-copies of one anomaly
    assert 30 in select("diversity", signals, 2, labelled=[12]).indices  # the far normal outlier
    assert 30 in select("hybrid", signals, 2, alpha=0.0, labelled=[12]).indices  # alpha 0 is diversity


@pytest.mark.parametrize(
    ("strategy", "kwargs", "message"),
    [
        ("smart", {}, "unknown strategy"),
        ("diversity", {}, "latents"),
        ("hybrid", {}, "anomaly, latents"),
        ("random", {"budget": -1}, "budget"),
        ("random", {"labelled": [99]}, "labelled"),
        ("random", {"alpha": -1.0}, "alpha"),
    ],
)
def test_refuses_bad_requests_with_a_config_error_naming_the_problem(strategy, kwargs, message):
    kwargs = {"budget": 2, **kwargs}
    with pytest.raises(ConfigError, match=message):
        select(strategy, PoolSignals(size=5), kwargs.pop("budget"), **kwargs)


def test_a_signal_of_the_wrong_length_is_refused():
    with pytest.raises(ConfigError, match="anomaly"):
        PoolSignals(size=5, anomaly=np.zeros(4))
