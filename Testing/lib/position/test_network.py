"""The regressor network and how slices are prepared for it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from AnomalyScoutLib.errors import ConfigError, VolumeError
from AnomalyScoutLib.position.network import PositionRegressor, RegressorConfig, regressor_input


def test_config_round_trips_through_json_and_refuses_unknown_keys():
    config = RegressorConfig(resolution=32, channels=(4, 8), slice_error=0.03)
    assert RegressorConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown"):
        RegressorConfig.from_dict({**config.to_dict(), "depth": 3})
    with pytest.raises(ConfigError, match="divisible"):
        RegressorConfig(resolution=20, channels=(4, 8, 16))


def test_the_network_gives_one_position_per_slice_and_checks_its_input(tiny_regressor):
    x = torch.zeros(5, 2, 16, 16)
    assert tiny_regressor(x).shape == (5,)
    with pytest.raises(VolumeError, match="expected"):
        tiny_regressor(torch.zeros(5, 1, 16, 16))


def _disc_slice(rows: int, cols: int, spacing: float, centre_mm: tuple[float, float]) -> np.ndarray:
    r = (np.arange(rows) + 0.5) * spacing - centre_mm[0]
    c = (np.arange(cols) + 0.5) * spacing - centre_mm[1]
    inside = (r[:, None] / 120.0) ** 2 + (c[None, :] / 160.0) ** 2 < 1.0
    return np.where(inside, 40.0, -1000.0).astype(np.float32)[None]


def test_the_input_is_centred_on_the_body_at_a_fixed_physical_size():
    """The same body at another place in the field of view and at another pixel size gives the same input."""
    config = RegressorConfig(resolution=32, channels=(4, 8))
    a = regressor_input(_disc_slice(200, 200, 2.0, (200.0, 200.0)), (2.0, 2.0), config)
    b = regressor_input(_disc_slice(500, 500, 0.8, (150.0, 260.0)), (0.8, 0.8), config)
    assert a.shape == (1, 2, 32, 32)
    assert float((a - b).abs().mean()) < 0.03
    # The soft-tissue channel sees the body at 40 HU, the wide channel sees air as -1.
    assert float(a[0, 0, 0, 0]) == pytest.approx(-1.0) and float(a[0, 1, 16, 16]) > -0.5


def test_a_regressor_of_another_shape_cannot_be_built_from_a_config_mismatch():
    regressor = PositionRegressor(RegressorConfig(resolution=32, channels=(4, 8)))
    assert regressor(torch.zeros(1, 2, 32, 32)).shape == (1,)
