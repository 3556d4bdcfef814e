"""The active-learning simulation's bookkeeping and statistics, on tiny synthetic slices (no phantom)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from benchmarks.active_learning import (
    Curve,
    SimulationConfig,
    labels_to_reach,
    learning_curve,
    markdown_table,
    normalised_auc,
    summarise,
    t_interval,
    target_verdict,
)
from benchmarks.slices import CaseInfo, SliceSet

torch.set_num_threads(1)


def _disc_slices(n_cases: int, per_case: int, anomalous_cases: int, seed: int) -> SliceSet:
    """Cases of bright discs ("liver"); in anomalous cases a dark hole ("lesion") sits inside the disc."""
    rng = np.random.default_rng(seed)
    size = 16
    rows, cols = np.mgrid[:size, :size]
    n = n_cases * per_case
    organ = np.zeros((n, size, size), dtype=bool)
    anomaly = np.zeros_like(organ)
    for i in range(n):
        r, c = rng.uniform(6, 10, 2)
        organ[i] = (rows - r) ** 2 + (cols - c) ** 2 <= 16
        if i // per_case < anomalous_cases:
            anomaly[i] = (rows - r) ** 2 + (cols - c) ** 2 <= 3
    images = (organ * 1.0 - anomaly * 1.2 - 0.5 + rng.normal(0, 0.1, organ.shape)).astype(np.float32)
    return SliceSet(
        images,
        np.zeros(n, np.float32),
        np.ones_like(organ),
        anomaly,
        organ,
        np.repeat(np.arange(n_cases), per_case),
        np.tile(np.arange(per_case), n_cases),
        tuple(CaseInfo(f"c{i}", "tumour" if i < anomalous_cases else "normal", i) for i in range(n_cases)),
    )


#: The smallest simulation that still has every stage: two rounds of each level, a few U-Net steps.
TINY_SIMULATION = {
    "initial": 3,
    "batch": 2,
    "rounds": 2,
    "initial_cases": 1,
    "case_batch": 1,
    "case_rounds": 2,
}
CONFIG = replace(
    SimulationConfig(),
    **TINY_SIMULATION,
    steps_initial=4,
    steps_per_round=2,
    batch_size=4,
    channels=(4, 8),
    mc_samples=2,
)


def _signals(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random(n), rng.normal(size=(n, 2))


@pytest.mark.parametrize("strategy", ["random", "hybrid", "uncertainty", "coreset"])
def test_slice_level_curve_adds_the_batch_each_round_and_records_dice(strategy):
    pool, test = _disc_slices(4, 5, 1, seed=0), _disc_slices(2, 3, 1, seed=1)
    curve = learning_curve(strategy, "slice", pool, test, *_signals(len(pool)), CONFIG, seed=0)
    assert curve.labels == [3, 5, 7]
    assert all(0.0 <= d <= 1.0 for d in curve.dice + curve.dice_anomalous)


def test_case_level_curve_labels_whole_cases():
    pool, test = _disc_slices(4, 5, 1, seed=0), _disc_slices(2, 3, 1, seed=1)
    curve = learning_curve("anomaly", "case", pool, test, *_signals(len(pool)), CONFIG, seed=0)
    assert curve.labels == [5, 10, 15]


def test_the_anomaly_strategy_labels_the_anomalous_case_first_and_counts_its_anomalous_slices():
    pool, test = _disc_slices(4, 5, 1, seed=0), _disc_slices(2, 3, 1, seed=1)
    scores = np.zeros(len(pool))
    scores[:5] = 1.0  # case 0, the anomalous one, looks most anomalous
    config = replace(CONFIG, case_rounds=1)
    seed = next(s for s in range(20) if np.random.default_rng(s).choice(4, 1)[0] != 0)
    curve = learning_curve("anomaly", "case", pool, test, scores, np.zeros((len(pool), 2)), config, seed=seed)
    assert curve.labels == [5, 10]
    assert curve.anomalous_labels == [0, 5]


def test_normalised_auc_is_the_mean_height_of_the_curve():
    assert normalised_auc([0, 10], [0.5, 0.5]) == pytest.approx(0.5)
    assert normalised_auc([10, 20, 40], [0.0, 1.0, 1.0]) == pytest.approx((5 + 20) / 30)


def test_labels_to_reach_is_the_first_label_count_at_or_above_target():
    assert labels_to_reach([8, 16, 24], [0.5, 0.9, 0.95], 0.9) == 16
    assert labels_to_reach([8, 16], [0.5, 0.6], 0.9) is None


def test_t_interval_covers_the_mean_and_widens_with_spread():
    narrow, wide = t_interval([0.5, 0.51, 0.49]), t_interval([0.3, 0.5, 0.7])
    assert narrow["low"] < 0.5 < narrow["high"]
    assert wide["high"] - wide["low"] > narrow["high"] - narrow["low"]
    assert np.isnan(t_interval([0.4])["low"])


def test_target_verdict_needs_hybrid_interval_above_each_baseline_and_half_the_labels():
    def curves(level: float, spread: float) -> list[Curve]:
        return [
            Curve([8, 16, 24], [0, 1, 2], [level - 0.2, level, level + 0.1], [level + s] * 3)
            for s in (-spread, 0.0, spread)
        ]

    full_pool = [(0.8, 0.8)] * 3
    summary = summarise(
        {
            "hybrid": curves(0.8, 0.01),
            "random": curves(0.6, 0.01),
            "uncertainty": curves(0.78, 0.05),
            "coreset": curves(0.5, 0.01),
        },
        full_pool,
    )
    verdict = target_verdict(summary)
    assert verdict["hybrid_auc_anomalous_interval_above"] == {
        "random": True,
        "uncertainty": False,
        "coreset": True,
    }
    assert verdict["labels_to_95pct"] == {"hybrid": 16, "random": None}
    assert verdict["hybrid_needs_at_most_half_of_random"] is None
    table = markdown_table({"levels": {"slice": {**summary, "target": verdict}}})
    assert "| hybrid | " in table and "| random | " in table and "not reached" in table
