"""Calibration: percentiles and flags against normal score distributions per position bin; storage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from AnomalyScoutLib.calibration import (
    Calibration,
    ModeCalibration,
    calibration_key,
    calibration_settings,
    check_fpr,
    fit_mode_calibration,
    placement_mismatch,
    self_calibrated,
)
from AnomalyScoutLib.errors import ConfigError, ModelFileError
from AnomalyScoutLib.scoring import ScoreConfig


def _normal_volumes(rng: np.random.Generator, n_volumes: int = 20, n_slices: int = 50):
    """Normal scores that depend on position: the lower body (p < 0.5) scores twice as high."""
    positions = [(np.arange(n_slices) + 0.5) / n_slices for _ in range(n_volumes)]
    scores = [np.where(p < 0.5, 2.0, 1.0) * (1.0 + 0.1 * rng.standard_normal(n_slices)) for p in positions]
    return scores, positions, [float(np.sort(s)[-3:].mean()) for s in scores]


def _fit(rng: np.random.Generator) -> ModeCalibration:
    scores, positions, cases = _normal_volumes(rng)
    return fit_mode_calibration(scores, positions, cases, {"method": "topk"}, n_bins=4, min_count=50)


def test_flags_about_fpr_of_new_normal_slices_in_every_bin():
    rng = np.random.default_rng(0)
    calibration = _fit(rng)
    scores, positions, cases = _normal_volumes(rng, n_volumes=40)
    result = calibration.apply(np.concatenate(scores), np.concatenate(positions), cases[0], fpr=0.05)
    assert 0.02 < result.flagged.mean() < 0.09
    low = np.concatenate(positions) < 0.5
    assert result.flagged[low].mean() > 0.01 and result.flagged[~low].mean() > 0.01  # no bin is blind


def test_the_same_score_is_anomalous_in_one_body_region_and_normal_in_another():
    calibration = _fit(np.random.default_rng(1))
    result = calibration.apply(np.array([1.6, 1.6]), np.array([0.9, 0.1]), 1.0, fpr=0.01)
    assert result.flagged.tolist() == [True, False]
    assert result.percentile[0] == 100.0 and result.percentile[1] < 5.0
    assert result.threshold[0] < result.threshold[1]


def test_case_score_gets_a_percentile_and_flag():
    calibration = _fit(np.random.default_rng(2))
    high = calibration.apply(np.array([1.0]), np.array([0.5]), 10.0, fpr=0.01)
    low = calibration.apply(np.array([1.0]), np.array([0.5]), 0.0, fpr=0.01)
    assert high.case_flagged and high.case_percentile == 100.0
    assert not low.case_flagged and low.case_percentile == 0.0


def test_calibration_round_trips_through_json():
    calibration = Calibration({calibration_key("fast", "topk"): _fit(np.random.default_rng(3))})
    restored = Calibration.from_json(json.loads(json.dumps(calibration.to_json())))
    original, copy = calibration.get("fast", "topk"), restored.get("fast", "topk")
    assert copy is not None and restored.get("accurate", "topk") is None
    probe = np.linspace(0.5, 2.5, 9), np.linspace(0, 1, 9)
    a, b = original.apply(*probe, 1.5, 0.01), copy.apply(*probe, 1.5, 0.01)
    np.testing.assert_allclose(a.percentile, b.percentile, atol=1e-3)
    assert a.flagged.tolist() == b.flagged.tolist()


def test_a_stored_calibration_serves_only_runs_with_its_exact_score_settings_and_steps():
    score = ScoreConfig()
    scores, positions, cases = _normal_volumes(np.random.default_rng(5))
    settings = calibration_settings(score.as_dict(), 20)
    fitted = fit_mode_calibration(scores, positions, cases, settings, n_bins=4)
    stored = Calibration({calibration_key("accurate", "topk"): fitted})
    assert stored.for_run("accurate", score, 20) is fitted
    assert stored.for_run("accurate", score, 50) is None  # other optimisation steps
    assert stored.for_run("accurate", ScoreConfig(smoothing_px=2.0), 20) is None  # same key, other definition
    assert stored.for_run("fast", score, 20) is None
    assert "'steps': 20" in stored.why_not_for_run("accurate", score, 50)
    assert "no calibration for mode 'fast'" in stored.why_not_for_run("fast", score, 0)


def test_an_uncalibrated_model_gives_an_empty_calibration():
    assert Calibration.from_json(None).get("fast", "topk") is None


@pytest.mark.parametrize(
    "data",
    [{"version": 2, "modes": {}}, {"version": 1}, {"version": 1, "modes": {"fast/topk": {"bins": []}}}],
)
def test_malformed_calibration_metadata_is_a_model_file_error(data):
    with pytest.raises(ModelFileError, match="calibration"):
        Calibration.from_json(data)


def test_sparse_bins_borrow_their_neighbours():
    calibration = fit_mode_calibration(
        [np.array([1.0, 2.0, 3.0])], [np.array([0.05, 0.5, 0.95])], [2.0], {}, n_bins=10, min_count=3
    )
    assert all(b.count == 3 for b in calibration.bins)


def test_self_calibration_flags_the_outlier_slice_of_a_case():
    scores = np.r_[np.random.default_rng(4).normal(1.0, 0.05, 60), 3.0]
    result = self_calibrated(scores, 3.0, fpr=0.01)
    assert result.flagged[-1] and result.flagged[:-1].sum() <= 2
    assert np.isnan(result.case_percentile) and not result.case_flagged


@pytest.mark.parametrize("fpr", [0.0, 0.5, -0.1, "0.01"])
def test_refuses_a_false_positive_rate_outside_zero_to_one_half(fpr):
    with pytest.raises(ConfigError, match="false-positive"):
        check_fpr(fpr)


def test_the_calibrate_command_stores_a_calibration_that_scoring_reads_back(tiny_model_file, tmp_path):
    import torch

    from AnomalyScoutLib.cli import main
    from AnomalyScoutLib.model_file import AnomalyModel

    torch.set_num_threads(1)
    original = AnomalyModel.load(tiny_model_file)
    model, out = str(tiny_model_file), str(tmp_path / "calibrated.safetensors")
    code = main(
        ["calibrate", "--model", model, "--out", out, "--phantom", "2", "--phantom-shape", "48,48,20",
         "--modes", "fast", "--bins", "2", "--device", "cpu"]
    )  # fmt: skip
    assert code == 0
    calibrated = AnomalyModel.load(tmp_path / "calibrated.safetensors")
    assert calibrated.model_id == original.model_id  # same tensors
    entry = Calibration.from_json(calibrated.calibration).get("fast", "topk")
    assert entry is not None and entry.n_cases == 2 and len(entry.bins) == 2
    assert entry.score_config["steps"] == 0 and entry.score_config["method"] == "topk"


def test_a_calibration_keeps_the_placement_of_its_bins_and_older_ones_read_as_index():
    scores, positions, cases = _normal_volumes(np.random.default_rng(7))
    fitted = fit_mode_calibration(scores, positions, cases, {"method": "topk"}, n_bins=4, placement="anatomy")
    stored = Calibration({calibration_key("fast", "topk"): fitted}).to_json()
    assert stored["modes"]["fast/topk"]["placement"] == "anatomy"
    assert Calibration.from_json(json.loads(json.dumps(stored))).get("fast", "topk").placement == "anatomy"
    del stored["modes"]["fast/topk"]["placement"]  # made before the field existed: by index
    assert Calibration.from_json(stored).get("fast", "topk").placement == "index"
    stored["modes"]["fast/topk"]["placement"] = "ruler"
    with pytest.raises(ModelFileError, match="placement"):
        Calibration.from_json(stored)
    with pytest.raises(ConfigError, match="placement"):
        fit_mode_calibration(scores, positions, cases, {"method": "topk"}, placement="auto")


def test_a_run_placed_unlike_its_calibration_gets_one_line_naming_both_and_the_fix():
    scores, positions, cases = _normal_volumes(np.random.default_rng(8))
    by_index = fit_mode_calibration(scores, positions, cases, {"method": "topk"}, n_bins=4)
    message = placement_mismatch(by_index, "anatomy")
    assert message is not None and "\n" not in message
    assert "made with index positions" in message and "anomalyscout calibrate" in message
    assert placement_mismatch(by_index, "index") is None and placement_mismatch(None, "anatomy") is None
