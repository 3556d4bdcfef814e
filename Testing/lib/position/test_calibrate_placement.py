"""``calibrate`` places slices as ``score`` does and files its bins with that placement; ``score`` warns when
it places slices unlike the calibration it uses; the phantom's index position is its anatomical scale.

The tiny regressor's estimates are replaced where a test needs a given anatomy (the ``estimates`` fixture):
the rules are tested here, the trained regressor's accuracy in ``benchmarks/position_track.py``.
"""

from __future__ import annotations

from dataclasses import replace
from unittest import mock

import numpy as np
import pytest
import torch

from AnomalyScoutLib.calibration import Calibration, calibration_key, fit_mode_calibration
from AnomalyScoutLib.cli import main
from AnomalyScoutLib.commands import calibrate
from AnomalyScoutLib.engine import ScoreOptions, VolumeScorer, score_file
from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.inversion import InversionConfig
from AnomalyScoutLib.io.volume import write_volume
from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.phantom.anatomy import PhantomGrid
from AnomalyScoutLib.phantom.case import auto_spacing
from AnomalyScoutLib.position.fit import MM_PER_UNIT
from AnomalyScoutLib.preprocessing import slice_positions
from AnomalyScoutLib.scoring import ScoreConfig

N = 24  # slices of the tiny phantom (13.75 mm each: 330 mm, the whole scale)
TRUTH = (np.arange(N) + 0.5) / N


def _scorer(model: AnomalyModel) -> VolumeScorer:
    return VolumeScorer(model, InversionConfig(mode="fast"), ScoreConfig(), torch.device("cpu"))


@pytest.fixture()
def spy(monkeypatch) -> dict[str, list[np.ndarray]]:
    """The positions ``calibrate_model`` conditions the generator on and bins the normal slices by."""
    seen: dict[str, list[np.ndarray]] = {"binned": [], "conditioned": []}
    fit, score = calibrate.fit_mode_calibration, VolumeScorer.score

    def fit_spy(scores, positions, *args, **kwargs):
        seen["binned"].append(np.concatenate(positions))
        return fit(scores, positions, *args, **kwargs)

    def score_spy(self, canonical_hu, spacing_kji, **kwargs):
        seen["conditioned"].append(np.asarray(kwargs["positions"]))
        return score(self, canonical_hu, spacing_kji, **kwargs)

    monkeypatch.setattr(calibrate, "fit_mode_calibration", fit_spy)
    monkeypatch.setattr(VolumeScorer, "score", score_spy)
    return seen


def test_a_cropped_phantom_calibrates_the_bins_of_the_positions_it_covers_not_zero_to_one(
    tiny_phantom, regressor_model_file, estimates, spy
):
    crop = slice(10, N)  # the upper abdomen only: p 0.44 .. 0.98
    volume = replace(tiny_phantom.volume, array_zyx=tiny_phantom.volume.array_zyx[crop])
    model = AnomalyModel.load(regressor_model_file)
    estimates(TRUTH[crop])
    done = calibrate.calibrate_model(model, [volume], [_scorer(model)], n_bins=10)
    assert spy["binned"][-1] == pytest.approx(TRUTH[crop], abs=0.02)
    assert spy["conditioned"][-1] == pytest.approx(TRUTH[crop], abs=0.02)
    assert done.placement == "anatomy" and done.calibration.get("fast", "topk").placement == "anatomy"
    assert done.slices == N - 10 and done.skipped_slices == 0

    by_index = calibrate.calibrate_model(model, [volume], [_scorer(model)], position="index", n_bins=10)
    assert spy["binned"][-1] == pytest.approx((np.arange(N - 10) + 0.5) / (N - 10))  # spread over 0..1
    assert by_index.calibration.get("fast", "topk").placement == "index"


def test_slices_out_of_range_are_left_out_of_the_bins_counted_and_the_placement_stored(
    regressor_model_file, estimates, tmp_path, capsys
):
    z_mm = np.arange(N) * (330.0 / N)
    estimates(np.minimum(0.6 + z_mm / 330.0, 0.99))  # liver at the bottom, chest at the top
    outside = int((0.6 + z_mm / 330.0 > 1.05).sum())
    out = tmp_path / "calibrated.safetensors"
    argv = ["calibrate", "--model", str(regressor_model_file), "--out", str(out), "--phantom", "1",
            "--phantom-shape", "64,64,24", "--modes", "fast", "--bins", "2", "--device", "cpu",
            "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert 0 < outside < N
    assert (
        f"placed by anatomy: {N - outside} normal slices of 1 volume(s); {outside} slice(s) outside"
        in printed
    )
    entry = Calibration.from_json(AnomalyModel.load(out).calibration).get("fast", "topk")
    assert entry is not None and entry.placement == "anatomy"
    assert max(b.count for b in entry.bins) == N - outside  # the sparse bins pooled every in-range slice


def test_a_volume_with_no_slice_in_range_is_skipped_and_none_left_stops_with_one_line(
    tiny_phantom, regressor_model_file, estimates
):
    model = AnomalyModel.load(regressor_model_file)
    estimates(np.full(N, 0.995))  # a chest scan: every slice saturates at the top
    with pytest.raises(
        ConfigError, match=r"at least one normal volume \(1 had no slice in the model's range\)"
    ):
        calibrate.calibrate_model(model, [tiny_phantom.volume], [_scorer(model)])


def test_a_model_without_a_regressor_calibrates_by_index_and_refuses_anatomy(tiny_model_file, tiny_phantom):
    model = AnomalyModel.load(tiny_model_file)
    done = calibrate.calibrate_model(model, [tiny_phantom.volume], [_scorer(model)], n_bins=2)
    assert done.placement == "index" and done.calibration.get("fast", "topk").placement == "index"
    with pytest.raises(ConfigError, match="no position regressor"):
        calibrate.calibrate_model(model, [tiny_phantom.volume], [_scorer(model)], position="anatomy")


def _calibrated(model: AnomalyModel, placement: str) -> AnomalyModel:
    settings = _scorer(model).calibration_settings()
    fitted = fit_mode_calibration([np.linspace(0, 1, 60)], [TRUTH.repeat(3)[:60]], [0.5], settings, n_bins=2,
                                  placement=placement)  # fmt: skip
    model.calibration = Calibration({calibration_key("fast", "topk"): fitted}).to_json()
    return model


@pytest.mark.parametrize(
    ("calibrated_with", "position", "warned"),
    [
        ("index", "auto", True),
        ("anatomy", "auto", False),
        ("index", "index", False),
        ("anatomy", "index", True),
    ],
)
def test_score_warns_in_one_line_when_it_places_slices_unlike_its_calibration(
    tiny_phantom, regressor_model_file, estimates, tmp_path, calibrated_with, position, warned
):
    path = tmp_path / "ct.nrrd"
    write_volume(tiny_phantom.volume, path)
    estimates(TRUTH)
    scorer = _scorer(_calibrated(AnomalyModel.load(regressor_model_file), calibrated_with))
    listener = mock.Mock()
    score_file(path, tmp_path / "out", scorer, ScoreOptions(position=position), listener=listener)
    warnings = [call.args[0] for call in listener.warning.call_args_list]
    mismatch = [w for w in warnings if "calibration was made with" in w]
    assert len(mismatch) == int(warned)
    if warned:
        assert (
            f"made with {calibrated_with} positions" in mismatch[0]
            and "anomalyscout calibrate" in mismatch[0]
        )


@pytest.mark.parametrize("n_slices", [1, 24, 100])
def test_the_phantoms_index_position_is_its_anatomical_scale(n_slices):
    # The phantom draws its anatomy at p = (k + 0.5) / n from the pelvis floor (0) to the lung bases (1),
    # over 330 mm with the default spacing: exactly the index placement and the regressor's mm per unit.
    grid = PhantomGrid((n_slices, 4, 4), auto_spacing((4, 4, n_slices)))
    positions = slice_positions(np.zeros((n_slices, 4, 4)), grid.spacing_zyx, "index")
    np.testing.assert_allclose(grid.p.ravel(), positions, rtol=1e-6)
    assert grid.length_z == pytest.approx(MM_PER_UNIT)
