"""The range gate and the domain check in ``score_file``: every rule, with inputs made from the fixtures.

The regressor's own estimates are replaced where a test needs a given anatomy (a chest, a scan running
out of the range): the rules are tested here, the trained regressor's accuracy in
``benchmarks/position_track.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from AnomalyScoutLib.calibration import Calibration, calibration_key, fit_mode_calibration
from AnomalyScoutLib.engine import ScoreOptions, VolumeScorer, score_file
from AnomalyScoutLib.errors import VolumeError
from AnomalyScoutLib.inversion import InversionConfig
from AnomalyScoutLib.io.volume import write_volume
from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.position import placement as placement_module
from AnomalyScoutLib.scoring import ScoreConfig

DATA = Path(__file__).resolve().parents[2] / "Data"


class Recorder:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def started(self, *args) -> None:
        pass

    def progress(self, *args) -> None:
        pass

    def warning(self, message: str) -> None:
        self.warnings.append(message)


def _scorer(tiny_architecture, regressor=None, calibration=None) -> VolumeScorer:
    model = AnomalyModel.create(tiny_architecture, seed=0)
    model.position_regressor = regressor
    model.calibration = calibration
    return VolumeScorer(model, InversionConfig(mode="fast"), ScoreConfig(), torch.device("cpu"))


@pytest.fixture()
def phantom_file(tiny_phantom, tmp_path) -> Path:
    path = tmp_path / "ct.nrrd"
    write_volume(tiny_phantom.volume, path)
    return path


def _estimates(monkeypatch, values: np.ndarray) -> None:
    monkeypatch.setattr(placement_module, "estimate_slices", lambda *args: np.asarray(values, dtype=float))


@pytest.mark.parametrize("name", ["693_UNCI.dcm", "CT_small.dcm"])
def test_a_head_or_neck_slice_stops_with_one_line_even_without_a_regressor(tiny_architecture, name, tmp_path):
    with pytest.raises(VolumeError) as error:
        score_file(DATA / "single_slices" / name, tmp_path / "out", _scorer(tiny_architecture))
    message = str(error.value)
    assert "no slice of this scan lies in the model's range" in message and "narrower" in message
    assert "\n" not in message and not (tmp_path / "out").exists()


def test_a_chest_scan_saturating_the_regressor_stops_with_one_line(
    tiny_architecture, tiny_regressor, phantom_file, monkeypatch, tmp_path
):
    _estimates(monkeypatch, np.full(24, 0.995))
    with pytest.raises(VolumeError, match="above the model's range"):
        score_file(phantom_file, tmp_path / "out", _scorer(tiny_architecture, tiny_regressor))
    assert not (tmp_path / "out").exists()


def test_slices_above_the_range_are_marked_never_flagged_and_summarised(
    tiny_architecture, tiny_regressor, tiny_phantom, phantom_file, monkeypatch, tmp_path
):
    z_mm = np.arange(24) * tiny_phantom.volume.spacing_xyz[2]
    _estimates(monkeypatch, np.minimum(0.6 + z_mm / 330.0, 0.99))  # liver up into the chest
    recorder = Recorder()
    run = score_file(
        phantom_file, tmp_path / "out", _scorer(tiny_architecture, tiny_regressor), listener=recorder
    )
    data = json.loads((tmp_path / "out" / "scores.json").read_text())
    rows = (tmp_path / "out" / "scores.csv").read_text().splitlines()
    in_range = np.array([s["in_range"] for s in data["slices"]])
    positions = np.array([s["position"] for s in data["slices"]])
    assert positions == pytest.approx(0.6 + z_mm / 330.0, abs=0.02)
    assert in_range.tolist() == (positions <= 1.05).tolist() and 0 < in_range.sum() < 24
    assert [int(r.split(",")[5]) for r in rows[1:]] == in_range.astype(int).tolist()
    assert not any(s["flagged"] for s in data["slices"] if not s["in_range"])
    assert all(s["percentile"] is None for s in data["slices"] if not s["in_range"])
    assert all(s["out_of_range"] == "above" for s in data["slices"] if not s["in_range"])
    expected = f"{24 - in_range.sum()} of 24 slices lie above the model's range (chest): not scored"
    assert data["range_summary"] == expected and expected in recorder.warnings
    assert data["position_method"] == "anatomy" and "straight-line fit" in data["position_note"]
    assert run.gate is not None and run.gate.in_range.tolist() == in_range.tolist()


def test_a_single_slice_says_how_it_was_placed(tiny_architecture, tiny_regressor, tmp_path):
    recorder = Recorder()
    score_file(
        DATA / "single_slices" / "explicit_VR-UN.dcm",
        tmp_path / "out",
        _scorer(tiny_architecture, tiny_regressor),
        ScoreOptions(position="anatomy"),
        listener=recorder,
    )
    data = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert "one slice: placed from its own image alone" in data["position_note"]
    assert any("one slice" in w for w in recorder.warnings)
    assert data["slices"][0]["position_uncertainty"] == pytest.approx(0.05)


def test_a_model_without_a_regressor_places_by_index_and_says_so(tiny_architecture, phantom_file, tmp_path):
    recorder = Recorder()
    score_file(phantom_file, tmp_path / "out", _scorer(tiny_architecture), listener=recorder)
    data = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert data["position_method"] == "index" and "attach-position" in data["position_note"]
    assert any("no position regressor" in w for w in recorder.warnings)
    assert [s["position"] for s in data["slices"]] == pytest.approx((np.arange(24) + 0.5) / 24)


def test_a_scan_unlike_the_calibration_data_has_its_flags_withheld(tiny_architecture, phantom_file, tmp_path):
    # Normal scores far below anything this model produces: every slice lies above its threshold.
    fitted = fit_mode_calibration(
        [np.linspace(0.0, 1e-6, 60)],
        [np.linspace(0, 1, 60)],
        [1e-6],
        _scorer(tiny_architecture).calibration_settings(),
        n_bins=1,
    )
    calibration = Calibration({calibration_key("fast", "topk"): fitted}).to_json()
    recorder = Recorder()
    run = score_file(
        phantom_file, tmp_path / "out", _scorer(tiny_architecture, calibration=calibration), listener=recorder
    )
    data = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert run.calibrated_by_model
    assert data["domain_warning"] is not None and "anomalyscout calibrate" in data["domain_warning"]
    assert not any(s["flagged"] for s in data["slices"]) and not data["case_flagged"]
    assert all(s["score"] > s["threshold"] for s in data["slices"])  # raw scores and thresholds stay
    assert data["domain_warning"] in recorder.warnings


def test_out_of_range_slices_above_their_threshold_are_still_not_flagged(
    tiny_architecture, tiny_regressor, tiny_phantom, phantom_file, monkeypatch, tmp_path
):
    # Normal scores tiny in the top position bin and huge elsewhere: every slice placed at the top of the
    # range or above it lies above its threshold, the lower in-range slices do not (no domain warning).
    positions = np.linspace(0.0, 1.0, 400)
    normal = np.where(positions >= 0.9, 0.0, 1e6) + np.linspace(0.0, 1e-6, 400)
    settings = _scorer(tiny_architecture).calibration_settings()
    fitted = fit_mode_calibration([normal], [positions], [0.0], settings, n_bins=10, min_count=5)
    calibration = Calibration({calibration_key("fast", "topk"): fitted}).to_json()
    z_mm = np.arange(24) * tiny_phantom.volume.spacing_xyz[2]
    _estimates(monkeypatch, np.minimum(0.6 + z_mm / 330.0, 0.99))
    run = score_file(phantom_file, tmp_path / "out", _scorer(tiny_architecture, tiny_regressor, calibration))
    data = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert data["domain_warning"] is None
    flagged = np.array([s["flagged"] for s in data["slices"]])
    in_range = np.array([s["in_range"] for s in data["slices"]])
    raw_above = (
        run.case.scores > fitted.apply(run.case.scores, run.case.positions, 0.0, data["fpr"]).threshold
    )
    assert raw_above[~in_range].all() and (~in_range).sum() > 0  # they would have been flagged
    assert not flagged[~in_range].any() and flagged[in_range].any()
