"""bf16 inference only where the hardware computes it, and only when the product asks for it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from AnomalyScoutLib import inversion, precision
from AnomalyScoutLib.anomaly_map.head import AnomalyHead, HeadConfig
from AnomalyScoutLib.anomaly_map.training import attach_head
from AnomalyScoutLib.cli import main as cli_main
from AnomalyScoutLib.engine import VolumeScorer, score_file
from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.inversion import InversionConfig, Reconstructor
from AnomalyScoutLib.io.volume import write_volume
from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.scoring import ScoreConfig

torch.set_num_threads(1)
CPU = torch.device("cpu")


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU that computes bf16 natively, whatever this machine is (emulated bf16 gives the same numbers)."""
    monkeypatch.setattr(inversion, "native_bf16", lambda device: True)


@pytest.fixture(scope="module")
def head_model(tiny_architecture) -> AnomalyModel:
    model = AnomalyModel.create(tiny_architecture, seed=0)
    torch.manual_seed(0)
    attach_head(model, AnomalyHead(HeadConfig(channels=(4, 8), top_fraction=0.05)), {})
    return model


@pytest.fixture(scope="module")
def ct_path(tiny_anomalous_phantom, tmp_path_factory):
    path = tmp_path_factory.mktemp("ct") / "ct.nrrd"
    write_volume(tiny_anomalous_phantom.volume, path)
    return str(path)


def test_unknown_precisions_are_refused_by_name():
    assert precision.check_precision("fp32") == "fp32"
    with pytest.raises(ConfigError, match="'fp16' is not one of auto, fp32"):
        precision.check_precision("fp16")


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "native"), [(False, False, False), (True, False, True), (False, True, True)]
)
def test_a_cpu_computes_bf16_natively_with_avx512_bf16_or_amx(monkeypatch, avx512_bf16, amx, native):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert precision.native_bf16(CPU) is native
    assert precision.native_bf16(torch.device("mps")) is False  # emulated there: slower than fp32


def test_on_a_cpu_only_the_product_runs_bf16_and_only_where_native(tiny_architecture, monkeypatch):
    model = AnomalyModel.create(tiny_architecture, seed=0)
    nets = (model.generator, model.encoder, model.discriminator)
    fast = InversionConfig(mode="fast")
    monkeypatch.setattr(inversion, "native_bf16", lambda device: True)
    assert Reconstructor(*nets, fast, CPU, cpu_bf16=True).bf16
    assert not Reconstructor(*nets, fast, CPU).bf16  # training and the benchmark harness keep fp32
    assert not Reconstructor(*nets, InversionConfig(mode="fast", amp=False), CPU, cpu_bf16=True).bf16
    monkeypatch.setattr(inversion, "native_bf16", lambda device: False)
    assert not Reconstructor(*nets, fast, CPU, cpu_bf16=True).bf16


def test_fp32_turns_bf16_off_and_auto_runs_every_network_under_autocast(
    head_model, bf16_cpu, ct_path, tmp_path
):
    fast, score = InversionConfig(mode="fast"), ScoreConfig()
    exact = VolumeScorer(head_model, fast, score, CPU, batch_size=5, precision="fp32")
    quick = VolumeScorer(head_model, fast, score, CPU, batch_size=5, precision="auto")
    assert (exact.precision, quick.precision) == ("fp32", "bf16")
    # On a CPU the refinement modes keep fp32: bf16 was measured in fast mode only.
    assert VolumeScorer(head_model, InversionConfig(mode="accurate"), score, CPU).precision == "fp32"
    runs = {p: score_file(ct_path, tmp_path / p, s) for p, s in (("fp32", exact), ("bf16", quick))}
    for name in runs:
        assert json.loads((tmp_path / name / "scores.json").read_text())["precision"] == name
    fp32, bf16 = runs["fp32"].case, runs["bf16"].case
    # The head's scores move (bf16 ran) but by little next to their spread (it ran the same networks).
    moved = np.abs(fp32.scores - bf16.scores)
    assert moved.max() > 0
    assert moved.max() < 0.1 * max(np.ptp(fp32.scores), 1e-3) + 0.01
    np.testing.assert_allclose(fp32.pixel, bf16.pixel, rtol=0.1, atol=0.02)


def test_a_bad_precision_on_the_command_line_is_one_line(ct_path, tiny_model_file, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli_main(
        ["score", ct_path, "--out", str(out), "--model", str(tiny_model_file), "--precision", "x"]
    )
    err = capsys.readouterr().err
    assert code != 0 and "precision 'x' is not one of auto, fp32" in err
    assert "Traceback" not in err and not out.exists()
