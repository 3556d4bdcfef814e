"""Fixtures of the position tests: a tiny random regressor (its weights do not matter to the rules tested)."""

from __future__ import annotations

import pytest
import torch

from AnomalyScoutLib.position.network import PositionRegressor, RegressorConfig

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_regressor() -> PositionRegressor:
    torch.manual_seed(0)
    return PositionRegressor(RegressorConfig(resolution=16, field_mm=440.0, channels=(4, 8))).eval()
