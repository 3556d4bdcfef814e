"""The real scoring engine behind ``rank``: a tiny untrained model on tiny phantom files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from AnomalyScoutLib.active.engine import model_case_scorer
from AnomalyScoutLib.calibration import Calibration
from AnomalyScoutLib.cli import main
from AnomalyScoutLib.errors import ModelFileError
from AnomalyScoutLib.io.geometry import axial_frame, to_canonical
from AnomalyScoutLib.io.volume import read_volume, write_volume
from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.nets.architecture import ArchitectureConfig
from AnomalyScoutLib.preprocessing import slice_positions
from AnomalyScoutLib.scoring import ScoreConfig

torch.set_num_threads(1)
TINY = ArchitectureConfig(32, (16, 16, 8, 8), z_dim=16, w_dim=16, mapping_layers=2, position_frequencies=2)


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_phantom, tiny_anomalous_phantom) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("engine_scorer")
    model = AnomalyModel.create(TINY, seed=0).save(folder / "tiny.safetensors")
    normal, anomalous = folder / "normal.nrrd", folder / "anomalous.nrrd"
    write_volume(tiny_phantom.volume, normal)
    write_volume(tiny_anomalous_phantom.volume, anomalous)
    return {"model": str(model), "normal": str(normal), "anomalous": str(anomalous), "folder": str(folder)}


def test_scores_every_canonical_slice_with_a_latent_code_and_no_percentile_without_calibration(files):
    scorer, model_id = model_case_scorer(files["model"], "cpu")
    scores = scorer(files["normal"])
    assert model_id and model_id == AnomalyModel.load(files["model"]).model_id
    assert scores.slice_scores.shape == (24,) and np.isfinite(scores.slice_scores).all()
    assert scores.latents.shape == (24, TINY.w_dim)
    assert np.isnan(scores.slice_percentiles).all() and np.isnan(scores.case_percentile)
    assert np.isfinite(scores.case_score)


@pytest.fixture(scope="module")
def calibrated_model(files) -> str:
    """The tiny model calibrated by the ``calibrate`` command itself (fast mode, two small phantoms)."""
    out = f"{files['folder']}/calibrated.safetensors"
    argv = ["calibrate", "--model", files["model"], "--out", out, "--phantom", "2",
            "--phantom-shape", "48,48,20", "--modes", "fast", "--bins", "2", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    return out


def test_a_calibrated_model_gives_the_percentiles_of_its_calibration(files, calibrated_model):
    scorer, _ = model_case_scorer(calibrated_model, "cpu")
    scores = scorer(files["anomalous"])
    model = AnomalyModel.load(calibrated_model)
    stored = Calibration.from_json(model.calibration)
    calibration = stored.for_run("fast", ScoreConfig(), 0)
    assert calibration is not None
    volume = read_volume(files["anomalous"])
    frame = axial_frame(volume)
    positions = slice_positions(
        to_canonical(volume.array_zyx, frame), frame.spacing_kji, model.position_method
    )
    expected = calibration.apply(scores.slice_scores, positions, scores.case_score, stored.default_fpr)
    # The calibration's intensity envelope (2000 HU) puts the metal clip's slice, and so the case, at 100.
    metal = volume_metal_slices(volume, frame)
    assert metal.sum() == 1
    np.testing.assert_allclose(scores.slice_percentiles, np.where(metal, 100.0, expected.percentile))
    assert scores.case_percentile == 100.0


def test_rank_with_a_calibrated_model_reports_percentiles_not_uncalibrated(files, calibrated_model, tmp_path):
    out = tmp_path / "worklist.csv"
    argv = ["rank", files["normal"], files["anomalous"], "--model", calibrated_model, "--device", "cpu",
            "--budget", "2", "--out", str(out), "--no-cache", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    items = json.loads(out.with_suffix(".json").read_text())["items"]
    assert len(items) == 2 and all(item["percentile"] is not None for item in items)
    assert not any("uncalibrated" in item["reason"] for item in items)


def test_a_missing_model_fails_before_any_case(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        model_case_scorer(str(tmp_path / "none.safetensors"), "cpu")


def test_rank_command_with_the_real_engine_lists_cases_and_skips_a_broken_one(files, tmp_path):
    broken = tmp_path / "broken.nrrd"
    broken.write_text("NRRD0004\n")
    out = tmp_path / "worklist.csv"
    argv = [
        "rank",
        files["normal"],
        files["anomalous"],
        str(broken),
        "--model",
        files["model"],
        "--device",
        "cpu",
        "--budget",
        "2",
        "--out",
        str(out),
        "--no-cache",
        "--no-progress",
    ]
    assert main(argv) == 0
    with open(out, newline="") as stream:
        assert sorted(row["case"] for row in csv.DictReader(stream)) == sorted(
            [files["normal"], files["anomalous"]]
        )
    document = json.loads(out.with_suffix(".json").read_text())
    assert [f["case"] for f in document["failed"]] == [str(broken)]


def volume_metal_slices(volume, frame) -> np.ndarray:
    """Canonical slices with body voxels above 2000 HU (the anomalous file's clip)."""
    canonical = to_canonical(volume.array_zyx, frame)
    return (canonical > 2000).reshape(len(canonical), -1).any(axis=1)
