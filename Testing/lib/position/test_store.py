"""The regressor on disk and in model files (optional: older model files load and place by index)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from AnomalyScoutLib.errors import ConfigError, ModelFileError
from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.position.placement import NO_REGRESSOR_NOTE, place_slices
from AnomalyScoutLib.position.store import FILE_KEY, attach_position, load_regressor, save_regressor


@pytest.fixture()
def regressor_file(tiny_regressor, tmp_path):
    return save_regressor(tmp_path / "position.safetensors", tiny_regressor, {"training": {"steps": 1}})


def test_a_regressor_file_round_trips(tiny_regressor, regressor_file):
    loaded, info = load_regressor(regressor_file)
    x = torch.randn(3, 2, 16, 16)
    assert torch.equal(loaded(x), tiny_regressor(x))
    assert info["training"] == {"steps": 1} and info["config"]["resolution"] == 16


def test_a_modified_regressor_file_is_refused(regressor_file, tmp_path):
    from safetensors import safe_open

    with safe_open(str(regressor_file), framework="pt") as handle:
        header = handle.metadata()
    tensors = load_file(str(regressor_file))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, str(tmp_path / "edited.safetensors"), metadata=header)
    with pytest.raises(ModelFileError, match="SHA-256"):
        load_regressor(tmp_path / "edited.safetensors")


def test_attaching_puts_the_regressor_in_the_model_and_keeps_the_rest(
    tiny_model_file, tiny_regressor, regressor_file, tmp_path
):
    out = tmp_path / "with_position.safetensors"
    attach_position(tiny_model_file, regressor_file, out)
    before, after = AnomalyModel.load(tiny_model_file), AnomalyModel.load(out)
    assert before.position_regressor is None and after.position_regressor is not None
    assert after.model_id != before.model_id
    x = torch.randn(2, 2, 16, 16)
    assert torch.equal(after.position_regressor(x), tiny_regressor(x))
    for name, tensor in before.generator.state_dict().items():
        assert torch.equal(tensor, after.generator.state_dict()[name])
    assert after.metadata["position_regressor"]["config"]["channels"] == [4, 8]
    # The model file itself holds the regressor, so it can be attached from there to another model.
    again = attach_position(tiny_model_file, out, tmp_path / "again.safetensors")
    assert torch.equal(again.position_regressor(x), tiny_regressor(x))


def test_a_model_file_with_position_tensors_but_no_configuration_is_refused(
    tiny_model_file, regressor_file, tmp_path
):
    from AnomalyScoutLib.model_file import METADATA_KEY, tensor_digest

    out = tmp_path / "with_position.safetensors"
    attach_position(tiny_model_file, regressor_file, out)
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as handle:
        metadata = json.loads(handle.metadata()[METADATA_KEY])
    tensors = load_file(str(out))
    del metadata["position_regressor"]
    metadata["tensor_sha256"] = tensor_digest(tensors)
    save_file(tensors, str(tmp_path / "broken.safetensors"), metadata={METADATA_KEY: json.dumps(metadata)})
    with pytest.raises(ModelFileError, match="unexpected tensors position"):
        AnomalyModel.load(tmp_path / "broken.safetensors")


def test_a_file_without_a_regressor_is_not_a_regressor_file(tiny_model_file):
    with pytest.raises(ModelFileError, match="no position regressor"):
        load_regressor(tiny_model_file)
    assert FILE_KEY == "anomalyscout_position"


def test_without_a_regressor_slices_are_placed_by_index_with_a_note(tiny_regressor):
    hu = np.zeros((4, 8, 8), np.float32)
    auto = place_slices(hu, (5.0, 1.0, 1.0), None, "auto")
    assert auto.method == "index" and auto.how == NO_REGRESSOR_NOTE
    assert auto.positions.tolist() == [0.125, 0.375, 0.625, 0.875]
    with pytest.raises(ConfigError, match="no position regressor"):
        place_slices(hu, (5.0, 1.0, 1.0), None, "anatomy")
    chosen = place_slices(hu, (5.0, 1.0, 1.0), tiny_regressor, "index")
    assert chosen.method == "index" and "index" in chosen.how
    assert place_slices(hu, (5.0, 1.0, 1.0), tiny_regressor, "auto").method == "anatomy"
