"""The one-file model format: exact round trip and refusal of every inconsistent file."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from AnomalyScoutLib.errors import ModelFileError
from AnomalyScoutLib.model_file import METADATA_KEY, AnomalyModel, tensor_digest
from AnomalyScoutLib.nets.architecture import ArchitectureConfig
from AnomalyScoutLib.preprocessing import HUWindow

torch.set_num_threads(1)
TINY = ArchitectureConfig(16, (8, 8, 8), z_dim=8, w_dim=8, mapping_layers=2)


@pytest.fixture()
def saved(tmp_path):
    model = AnomalyModel.create(TINY, window=HUWindow(-200.0, 300.0), training={"kimg": 1}, seed=3)
    path = model.save(tmp_path / "model.safetensors")
    return model, path


def _rewrite(path, out, *, tensors=None, metadata=None, rehash=False):
    """Copies a model file with edited tensors/metadata; ``rehash`` makes the stored SHA-256 fit the edit."""
    with safe_open(str(path), framework="pt") as handle:
        stored = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        header = json.loads(handle.metadata()[METADATA_KEY])
    if tensors:
        tensors(stored)
    header = metadata(header) if metadata else header
    if rehash:
        header["tensor_sha256"] = tensor_digest(stored)
    save_file(stored, str(out), metadata={METADATA_KEY: json.dumps(header)})
    return out


def test_a_saved_model_loads_back_with_identical_weights_and_metadata(saved):
    model, path = saved
    loaded = AnomalyModel.load(path, "cpu")
    assert loaded.window == HUWindow(-200.0, 300.0)
    assert loaded.position_method == "index" and loaded.resolution == 16
    assert loaded.metadata["training"] == {"kimg": 1} and loaded.calibration is None
    assert loaded.model_id == model.model_id and loaded.model_id.startswith("anomalyscout-16-")
    for name, tensor in model.state_tensors().items():
        assert torch.equal(tensor, loaded.state_tensors()[name]), name
    ws = loaded.encoder(torch.zeros(1, 1, 16, 16), torch.tensor([0.5]))
    assert torch.equal(ws, model.encoder.eval()(torch.zeros(1, 1, 16, 16), torch.tensor([0.5])))


def test_half_precision_storage_halves_the_file_and_stays_close(saved, tmp_path):
    model, path = saved
    half = model.save(tmp_path / "half.safetensors", half=True)
    assert half.stat().st_size < 0.6 * path.stat().st_size
    loaded = AnomalyModel.load(half)
    ws = model.generator.mapping(torch.randn(2, 8), torch.tensor([0.2, 0.8]))
    reference = model.generator.synthesis(ws, noise_mode="const")
    assert (loaded.generator.synthesis(ws, noise_mode="const") - reference).abs().max() < 0.05


def test_a_stored_calibration_survives_the_round_trip(saved, tmp_path):
    model, _ = saved
    model.calibration = {"version": 1, "modes": {}}
    loaded = AnomalyModel.load(model.save(tmp_path / "calibrated.safetensors"))
    assert loaded.calibration == {"version": 1, "modes": {}}


def test_a_tampered_weight_is_refused(saved, tmp_path):
    _, path = saved

    def tamper(tensors):
        tensors["generator.synthesis.const"] = tensors["generator.synthesis.const"] + 1e-3

    with pytest.raises(ModelFileError, match="SHA-256"):
        AnomalyModel.load(_rewrite(path, tmp_path / "t.safetensors", tensors=tamper))


def test_an_unknown_format_version_is_refused(saved, tmp_path):
    _, path = saved
    bad = _rewrite(path, tmp_path / "v.safetensors", metadata=lambda h: {**h, "format_version": 2})
    with pytest.raises(ModelFileError, match="format version 2"):
        AnomalyModel.load(bad)


def test_an_architecture_that_does_not_match_the_tensors_is_refused(saved, tmp_path):
    _, path = saved

    def wider(header):
        header["architecture"]["channels"] = [8, 8, 16]
        return header

    with pytest.raises(ModelFileError, match="has shape"):
        AnomalyModel.load(_rewrite(path, tmp_path / "a.safetensors", metadata=wider))


def test_missing_or_extra_tensors_are_refused_by_name(saved, tmp_path):
    _, path = saved
    out = tmp_path / "e.safetensors"
    with pytest.raises(ModelFileError, match="missing tensors encoder.mean_w_table"):
        AnomalyModel.load(_rewrite(path, out, tensors=lambda t: t.pop("encoder.mean_w_table"), rehash=True))
    with pytest.raises(ModelFileError, match="unexpected tensors encoder.extra"):
        add = lambda t: t.__setitem__("encoder.extra", torch.zeros(1))  # noqa: E731
        AnomalyModel.load(_rewrite(path, out, tensors=add, rehash=True))


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"not a model at all", "not a readable safetensors"), (None, "does not exist")],
)
def test_unreadable_or_missing_files_are_refused(tmp_path, content, message):
    path = tmp_path / "model.safetensors"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelFileError, match=message):
        AnomalyModel.load(path)


def test_a_safetensors_file_without_anomalyscout_metadata_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ModelFileError, match="no AnomalyScout metadata"):
        AnomalyModel.load(path)
