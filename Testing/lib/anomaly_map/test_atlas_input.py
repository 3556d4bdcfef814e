"""A head that reads the position atlas: its extra channel, its link through the model file, and the
refusals that keep the head and the atlas it was trained on together."""

from __future__ import annotations

import pytest
import torch

from AnomalyScoutLib.anomaly_map.head import AnomalyHead, HeadConfig
from AnomalyScoutLib.anomaly_map.training import attach_head
from AnomalyScoutLib.cli import main
from AnomalyScoutLib.errors import ConfigError, ModelFileError
from AnomalyScoutLib.io.volume import write_volume
from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.position_atlas import AtlasConfig, PositionAtlas

torch.set_num_threads(1)


def _atlas(resolution: int, seed: int = 0) -> PositionAtlas:
    atlas = PositionAtlas(AtlasConfig(bins=4), resolution)
    generator = torch.Generator().manual_seed(seed)
    atlas.mean.copy_(torch.rand(atlas.mean.shape, generator=generator) * 2 - 1)
    atlas.std.copy_(0.05 + torch.rand(atlas.std.shape, generator=generator))
    return atlas


def test_the_extra_channel_is_the_log_z_map_of_the_linked_atlas():
    head = AnomalyHead(HeadConfig(channels=(4, 8), use_atlas=True))
    x, recon, position = torch.rand(2, 16, 16) * 2 - 1, torch.zeros(2, 16, 16), torch.tensor([0.1, 0.9])
    with pytest.raises(ValueError, match="atlas"):
        head.inputs(x, recon, position)
    atlas = _atlas(16)
    head.read_atlas(atlas)
    planes = head.inputs(x, recon, position)
    assert planes.shape == (2, 5, 16, 16) == (2, head.config.in_channels, 16, 16)
    torch.testing.assert_close(planes[:, 4], torch.log1p(atlas.z_maps(x, position)))
    assert "_atlas" not in dict(head.named_modules()) and not any("mean" in k for k in head.state_dict())


@pytest.fixture()
def atlas_head_file(tiny_model_file, tmp_path):
    model = AnomalyModel.load(tiny_model_file)
    model.atlas = _atlas(model.resolution)
    model.metadata["position_atlas"] = model.atlas.metadata(1)
    torch.manual_seed(0)
    attach_head(model, AnomalyHead(HeadConfig(channels=(4, 8), use_atlas=True)), {})
    return model, model.save(tmp_path / "atlas-head.safetensors")


def test_a_loaded_model_links_its_atlas_into_its_head_and_draws_the_same_map(atlas_head_file):
    model, path = atlas_head_file
    loaded = AnomalyModel.load(path)
    assert loaded.head._atlas[0] is loaded.atlas
    x = torch.rand(2, loaded.resolution, loaded.resolution) * 2 - 1
    position, body = torch.tensor([0.2, 0.7]), torch.ones(x.shape, dtype=torch.bool)
    with torch.no_grad():
        before = model.head.anomaly_map(x, x, position, body)
        after = loaded.head.anomaly_map(x, x, position, body)
    torch.testing.assert_close(after, before, atol=1e-3, rtol=1e-3)  # a half file: float16 networks
    torch.testing.assert_close(
        loaded.head.inputs(x, x, position)[:, -1], torch.log1p(loaded.atlas.z_maps(x, position))
    )


def test_an_atlas_head_without_an_atlas_is_refused(tiny_model_file, atlas_head_file, tmp_path):
    with pytest.raises(ConfigError, match="atlas"):
        attach_head(AnomalyModel.load(tiny_model_file), AnomalyHead(HeadConfig((4, 8), use_atlas=True)), {})
    model, _ = atlas_head_file
    model.atlas = None
    del model.metadata["position_atlas"]
    path = model.save(tmp_path / "no-atlas.safetensors")
    with pytest.raises(ModelFileError, match="reads a position atlas"):
        AnomalyModel.load(path)


def test_fit_atlas_refuses_to_replace_the_atlas_a_head_reads(atlas_head_file, tiny_phantom, tmp_path, capsys):
    _, path = atlas_head_file
    write_volume(tiny_phantom.volume, tmp_path / "normal.nrrd")
    out = tmp_path / "refit.safetensors"
    argv = ["fit-atlas", "--model", str(path), "--data", str(tmp_path / "normal.nrrd"), "--out", str(out)]
    assert main(argv) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "train the head again" in error[0] and not out.exists()
