"""Fixtures of the position tests: a tiny random regressor (its weights do not matter to the rules tested),
a model file holding it, and a way to set what it "sees" in a scan."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from AnomalyScoutLib.position import placement
from AnomalyScoutLib.position.network import PositionRegressor, RegressorConfig
from AnomalyScoutLib.position.store import attach_position, save_regressor

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_regressor() -> PositionRegressor:
    torch.manual_seed(0)
    return PositionRegressor(RegressorConfig(resolution=16, field_mm=440.0, channels=(4, 8))).eval()


@pytest.fixture()
def regressor_model_file(tiny_model_file, tiny_regressor, tmp_path):
    """The tiny model with the tiny regressor attached (``attach-position``), uncalibrated."""
    regressor = save_regressor(tmp_path / "position.safetensors", tiny_regressor, {"training": {}})
    out = tmp_path / "with_position.safetensors"
    attach_position(tiny_model_file, regressor, out)
    return out


@pytest.fixture()
def estimates(monkeypatch) -> Callable[[np.ndarray], None]:
    """``estimates(values)``: the regressor's per-slice estimates replaced by ``values`` (the fit and the
    gate then work on them), so that a test sets the anatomy a scan shows."""

    def set_values(values: np.ndarray) -> None:
        monkeypatch.setattr(placement, "estimate_slices", lambda *args: np.asarray(values, dtype=float))

    return set_values
