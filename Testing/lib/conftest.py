"""Fixtures for the library tests that need a model but not a trained one.

- ``tiny_architecture``: a 32x32 configuration small enough that a whole phantom scores in about a second.
- ``tiny_model_file``: a random-initialised (seed 0) model of that configuration saved as a model file, for
  code that loads models from disk (the worker, ``anomalyscout calibrate``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.nets.architecture import ArchitectureConfig


@pytest.fixture(scope="session")
def tiny_architecture() -> ArchitectureConfig:
    return ArchitectureConfig(
        32, (16, 16, 8, 8), z_dim=16, w_dim=16, mapping_layers=2, position_frequencies=2
    )


@pytest.fixture(scope="session")
def tiny_model_file(tiny_architecture, tmp_path_factory) -> Path:
    return AnomalyModel.create(tiny_architecture, seed=0).save(
        tmp_path_factory.mktemp("model") / "tiny.safetensors"
    )
