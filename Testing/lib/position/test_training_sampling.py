"""How position training draws its self-supervised runs: real CT gets its stated share of them.

With runs drawn uniformly over all volumes, one real CT among 24 phantoms was in a run every sixth step and
the regressor placed whole regions of it on plateaus; ``real_run_share`` fixes the share instead.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.position.training import TrainingConfig, TrainingVolume, _run_volume


def _volume(name: str, known: bool) -> TrainingVolume:
    return TrainingVolume(name, torch.zeros(4, 2, 2), (1.0, 1.0, 1.0), np.zeros(4) if known else None)


PHANTOMS = [_volume(f"phantom{i}", True) for i in range(24)]
REAL = [_volume("real", False)]


@pytest.mark.parametrize("share", [0.0, 0.3, 0.5, 1.0])
def test_runs_come_from_real_volumes_at_the_stated_share(share):
    rng = np.random.default_rng(0)
    drawn = [_run_volume(PHANTOMS, REAL, share, rng).name for _ in range(4000)]
    assert abs(drawn.count("real") / len(drawn) - share) < 0.03
    # The phantoms' share is spread over all of them, not stuck on one.
    assert share == 1.0 or len({name for name in drawn if name != "real"}) == len(PHANTOMS)


def test_without_real_volumes_every_run_comes_from_a_phantom():
    rng = np.random.default_rng(0)
    assert {_run_volume(PHANTOMS, [], 1.0, rng).name for _ in range(200)} <= {v.name for v in PHANTOMS}


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_a_share_outside_zero_to_one_is_refused(share):
    with pytest.raises(ConfigError, match="real-run share"):
        TrainingConfig(real_run_share=share)
