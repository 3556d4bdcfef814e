"""``rank`` places and gates slices as ``score`` does: calibration bins looked up by anatomy when the model
holds a regressor, out-of-range slices never listed, the placement in the worklist and in the cache key."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from AnomalyScoutLib.active.cache import ScoreCache
from AnomalyScoutLib.active.engine import ModelCaseScorer
from AnomalyScoutLib.active.ranking import CaseScores, build_worklist
from AnomalyScoutLib.calibration import (
    Calibration,
    calibration_key,
    calibration_settings,
    fit_mode_calibration,
)
from AnomalyScoutLib.cli import main
from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.io.volume import write_volume
from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.scoring import ScoreConfig

N = 24
TRUTH = (np.arange(N) + 0.5) / N


@pytest.fixture()
def split_calibrated(regressor_model_file, tmp_path) -> str:
    """The regressor model calibrated (by anatomy) so that the two halves of the body differ completely:
    every score is normal in the upper half (bin 1) and below normal in the lower half (bin 0)."""
    model = AnomalyModel.load(regressor_model_file)
    positions = np.linspace(0.0, 1.0, 400)
    normal = np.where(positions >= 0.5, -1e6, 1e6) + np.linspace(0.0, 1e-6, 400)
    settings = calibration_settings(ScoreConfig().as_dict(), 0)
    fitted = fit_mode_calibration([normal], [positions], [0.0], settings, n_bins=2, min_count=5,
                                  placement="anatomy")  # fmt: skip
    model.calibration = Calibration({calibration_key("fast", "topk"): fitted}).to_json()
    return str(model.save(tmp_path / "split.safetensors"))


def test_percentiles_come_from_the_bins_of_the_anatomical_position(tiny_phantom, split_calibrated, estimates):
    crop = slice(12, N)  # the upper half of the body: anatomy puts every slice into bin 1, index half of them
    volume = replace(tiny_phantom.volume, array_zyx=tiny_phantom.volume.array_zyx[crop])
    estimates(TRUTH[crop])
    by_anatomy = ModelCaseScorer(split_calibrated, "cpu").score_volume(volume)
    by_index = ModelCaseScorer(split_calibrated, "cpu", position="index").score_volume(volume)
    assert (by_anatomy.slice_percentiles == 100.0).all()
    assert (by_index.slice_percentiles[: (N - 12) // 2] == 0.0).all()
    assert (by_index.slice_percentiles[(N - 12) // 2 :] == 100.0).all()


def test_slices_outside_the_models_range_are_never_listed(tiny_phantom, regressor_model_file, estimates):
    z_mm = np.arange(N) * (330.0 / N)
    estimates(np.minimum(0.6 + z_mm / 330.0, 0.99))  # the upper slices lie in the chest
    scores = ModelCaseScorer(str(regressor_model_file), "cpu").score_volume(tiny_phantom.volume)
    inside = 0.6 + z_mm / 330.0 <= 1.05
    assert scores.in_range is not None and scores.in_range.tolist() == inside.tolist() and not inside.all()
    slices = build_worklist([("ct", scores)], "anomaly", N, level="slice")
    assert sorted(item.slice_start for item in slices) == np.flatnonzero(inside).tolist()
    (case,) = build_worklist([("ct", scores)], "anomaly", 1, level="case")
    assert inside[case.slice_start : case.slice_end + 1].all()


def test_the_rank_command_places_as_score_and_keys_its_cache_by_the_placement(
    tiny_phantom, regressor_model_file, estimates, tmp_path
):
    ct = tmp_path / "ct.nrrd"
    write_volume(tiny_phantom.volume, ct)
    estimates(TRUTH)
    out, cache = tmp_path / "worklist.csv", tmp_path / "cache"

    def rank(*options: str) -> dict:
        argv = ["rank", str(ct), "--model", str(regressor_model_file), "--device", "cpu", "--budget", "1",
                "--out", str(out), "--cache-dir", str(cache), "--no-progress", *options]  # fmt: skip
        assert main(argv) == 0
        return json.loads(out.with_suffix(".json").read_text())

    first = rank()
    assert first["position"] == "anatomy" and first["from_cache"] == 0
    assert rank()["from_cache"] == 1
    by_index = rank("--position", "index")
    assert by_index["position"] == "index" and by_index["from_cache"] == 0  # not the anatomy entry


def test_rank_by_anatomy_with_a_model_without_a_regressor_stops_before_any_case(
    tiny_model_file, tmp_path, capsys
):
    out = tmp_path / "w.csv"
    argv = ["rank", str(tmp_path / "missing.nrrd"), "--model", str(tiny_model_file), "--budget", "1",
            "--position", "anatomy", "--out", str(out), "--no-cache", "--no-progress"]  # fmt: skip
    assert main(argv) == 1
    assert "no position regressor" in capsys.readouterr().err
    assert not out.exists()


def test_the_score_cache_keeps_which_slices_are_in_range(tmp_path):
    scores = CaseScores(
        np.arange(4.0), np.full(4, np.nan), 1.0, np.nan, np.zeros((4, 2)), np.array([1, 1, 0, 0])
    )
    cache = ScoreCache(tmp_path)
    cache.put("key", scores)
    assert cache.get("key").judged.tolist() == [True, True, False, False]
    with pytest.raises(ConfigError, match="at least one slice in range"):
        CaseScores(np.arange(2.0), np.full(2, np.nan), 1.0, np.nan, np.zeros((2, 2)), np.zeros(2, bool))
