"""A model file may carry the anomaly-map head: exact round trip, optional, refused when inconsistent."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from AnomalyScoutLib.anomaly_map.head import AnomalyHead, HeadConfig
from AnomalyScoutLib.anomaly_map.training import attach_head
from AnomalyScoutLib.errors import ModelFileError
from AnomalyScoutLib.model_file import METADATA_KEY, AnomalyModel, tensor_digest

torch.set_num_threads(1)


@pytest.fixture()
def with_head(tiny_model_file, tmp_path):
    model = AnomalyModel.load(tiny_model_file)
    torch.manual_seed(1)
    attach_head(model, AnomalyHead(HeadConfig(channels=(4, 8))), {"steps_done": 3})
    return model, model.save(tmp_path / "with-head.safetensors", half=True)


def test_the_head_round_trips_exactly_with_its_settings(with_head):
    model, path = with_head
    loaded = AnomalyModel.load(path)
    assert loaded.head is not None and loaded.head.config == model.head.config
    assert loaded.metadata["head"]["training"] == {"steps_done": 3}
    for name, tensor in model.head.state_dict().items():
        assert torch.equal(loaded.head.state_dict()[name], tensor)  # float32 even in a half file
    assert not loaded.head.training


def test_a_model_without_a_head_still_loads_with_none(tiny_model_file):
    assert AnomalyModel.load(tiny_model_file).head is None


def _rewrite(path, out, edit_tensors=None, edit_header=None):
    with safe_open(str(path), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        header = json.loads(handle.metadata()[METADATA_KEY])
    if edit_tensors:
        edit_tensors(tensors)
    if edit_header:
        edit_header(header)
    header["tensor_sha256"] = tensor_digest(tensors)
    save_file(tensors, str(out), metadata={METADATA_KEY: json.dumps(header)})
    return out


def test_head_tensors_without_head_settings_are_refused(with_head, tmp_path):
    path = _rewrite(with_head[1], tmp_path / "x.safetensors", edit_header=lambda h: h.pop("head"))
    with pytest.raises(ModelFileError, match="unexpected tensors head."):
        AnomalyModel.load(path)


def test_a_missing_head_tensor_is_refused(with_head, tmp_path):
    path = _rewrite(with_head[1], tmp_path / "x.safetensors", edit_tensors=lambda t: t.pop("head.out.bias"))
    with pytest.raises(ModelFileError, match="missing tensors head.out.bias"):
        AnomalyModel.load(path)


def test_head_settings_that_do_not_fit_the_tensors_are_refused(with_head, tmp_path):
    def wider(header):
        header["head"]["config"]["channels"] = [8, 16]

    path = _rewrite(with_head[1], tmp_path / "x.safetensors", edit_header=wider)
    with pytest.raises(ModelFileError, match="shape"):
        AnomalyModel.load(path)


def test_invalid_head_settings_are_refused_in_one_line(with_head, tmp_path):
    def broken(header):
        header["head"]["config"]["stride"] = 3

    path = _rewrite(with_head[1], tmp_path / "x.safetensors", edit_header=broken)
    with pytest.raises(ModelFileError, match="invalid anomaly-map head settings: head stride"):
        AnomalyModel.load(path)


def test_a_new_top_fraction_keeps_the_weights_and_drops_the_calibration(with_head, tmp_path):
    from AnomalyScoutLib.anomaly_map.training import set_top_fraction
    from AnomalyScoutLib.errors import ConfigError

    model, _ = with_head
    model.calibration = {"version": 1, "modes": {}}
    weights = {k: t.clone() for k, t in model.head.state_dict().items()}
    set_top_fraction(model, 0.2)
    loaded = AnomalyModel.load(model.save(tmp_path / "retargeted.safetensors"))
    assert loaded.head.config.top_fraction == 0.2 and loaded.calibration is None
    assert loaded.metadata["head"]["training"] == {"steps_done": 3}
    assert all(torch.equal(loaded.head.state_dict()[k], t) for k, t in weights.items())
    with pytest.raises(ConfigError, match="top_fraction"):
        set_top_fraction(model, 1.5)
    with pytest.raises(ConfigError, match="no anomaly-map head"):
        set_top_fraction(AnomalyModel.create(model.architecture), 0.2)
