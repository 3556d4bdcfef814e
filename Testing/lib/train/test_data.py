"""Listing volumes and preprocessing them into training slices."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.preprocessing import HUWindow
from AnomalyScoutLib.train.data import list_volumes, load_slices


def test_a_folder_a_manifest_and_a_list_name_the_same_volumes(volume_folder, tmp_path):
    files = list_volumes(volume_folder)
    assert [p.name for p in files] == ["ct0.nrrd", "ct1.nrrd"]
    (volume_folder / "notes.txt").write_text("not a volume")
    assert list_volumes(volume_folder) == files
    listing = tmp_path / "list.txt"
    listing.write_text("# training cases\nvolumes/ct1.nrrd\n\nvolumes/ct0.nrrd  # second\n")
    assert [p.name for p in list_volumes(listing)] == ["ct1.nrrd", "ct0.nrrd"]
    (volume_folder / "manifest.json").write_text(json.dumps({"cases": [{"files": {"ct": "ct1.nrrd"}}]}))
    assert [p.name for p in list_volumes(volume_folder)] == ["ct1.nrrd"]


def test_missing_or_empty_data_is_refused_with_the_path(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        list_volumes(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="names no CT volume"):
        list_volumes(tmp_path)
    listing = tmp_path / "list.txt"
    listing.write_text("gone.nii.gz\n")
    with pytest.raises(ConfigError, match="missing volumes"):
        list_volumes(listing)


def test_slices_are_windowed_resampled_and_air_slices_skipped_without_shifting_positions(volume_folder):
    data = load_slices(list_volumes(volume_folder), 32, HUWindow())
    n_per_volume = 25  # 24 phantom slices + 1 air slice
    assert data.skipped == 2 and len(data) == 2 * (n_per_volume - 1)
    assert data.images.shape == (len(data), 1, 32, 32) and data.images.dtype == torch.float16
    assert data.images.min() >= -1 and data.images.max() <= 1
    expected = (np.arange(n_per_volume - 1) + 0.5) / n_per_volume
    assert np.allclose(data.positions[: n_per_volume - 1].numpy(), expected)
    images, positions = data.batch(5, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert images.shape == (5, 1, 32, 32) and images.dtype == torch.float32 and positions.shape == (5,)


def test_data_may_be_one_volume_file_and_a_binary_non_volume_is_one_clear_line(tmp_path, tiny_phantom):
    from AnomalyScoutLib.io.volume import write_volume

    write_volume(tiny_phantom.volume, tmp_path / "ct.nii.gz")
    assert list_volumes(tmp_path / "ct.nii.gz") == [tmp_path / "ct.nii.gz"]
    (tmp_path / "ct.bin").write_bytes(b"\x8b\x00\xff" * 10)
    with pytest.raises(ConfigError, match="neither a CT volume .* nor a text list"):
        list_volumes(tmp_path / "ct.bin")
