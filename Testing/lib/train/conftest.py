"""Fixtures of the training tests: a tiny architecture and a folder of tiny phantom volumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from AnomalyScoutLib.io.volume import Volume, write_volume
from AnomalyScoutLib.nets.architecture import ArchitectureConfig

torch.set_num_threads(1)

#: Small enough that a training step takes milliseconds on one core.
TINY = ArchitectureConfig(16, (16, 16, 8), z_dim=16, w_dim=16, mapping_layers=2)


@pytest.fixture()
def tiny_config_file(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY.to_dict()))
    return path


@pytest.fixture()
def volume_folder(tmp_path, tiny_phantom):
    """Two copies of the session phantom (one shifted by 5 HU) plus one all-air slice at the top of each."""
    folder = tmp_path / "volumes"
    folder.mkdir()
    volume = tiny_phantom.volume
    for i in range(2):
        array = np.concatenate([volume.array_zyx + 5.0 * i, np.full_like(volume.array_zyx[:1], -1000.0)])
        write_volume(
            Volume(array, volume.spacing_xyz, volume.origin_xyz, volume.direction), folder / f"ct{i}.nrrd"
        )
    return folder
