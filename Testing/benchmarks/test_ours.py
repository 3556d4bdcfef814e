"""The benchmark's generator detector uses a stored calibration exactly when ``anomalyscout score`` would."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from AnomalyScoutLib.calibration import (
    Calibration,
    calibration_key,
    calibration_settings,
    fit_mode_calibration,
)
from AnomalyScoutLib.inversion import InversionConfig
from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.nets.architecture import ArchitectureConfig
from AnomalyScoutLib.scoring import ScoreConfig
from benchmarks.detectors import Detection
from benchmarks.ours import GeneratorDetector
from benchmarks.slices import CaseInfo, SliceSet

torch.set_num_threads(1)
TINY = ArchitectureConfig(32, (16, 16, 8, 8), z_dim=16, w_dim=16, mapping_layers=2, position_frequencies=2)
POSITIONS = (np.arange(20) + 0.5) / 20


@pytest.fixture(scope="module")
def calibrated_model(tmp_path_factory) -> str:
    """A tiny model whose fast-mode calibration was made with the default score (normal scores 1..2)."""
    scores = np.linspace(1.0, 2.0, 20)
    settings = calibration_settings(ScoreConfig().as_dict(), InversionConfig(mode="fast").resolved_steps)
    fitted = fit_mode_calibration([scores], [POSITIONS], [2.0], settings, n_bins=1)
    model = AnomalyModel.create(TINY, seed=0)
    model.calibration = Calibration({calibration_key("fast", "topk"): fitted}, default_fpr=0.05).to_json()
    return str(model.save(tmp_path_factory.mktemp("ours") / "calibrated.safetensors"))


def test_the_detector_is_calibrated_only_for_the_settings_of_its_calibration(calibrated_model):
    def detector(inversion: InversionConfig, score: ScoreConfig) -> GeneratorDetector:
        return GeneratorDetector("ours", calibrated_model, inversion, score)

    assert detector(InversionConfig(mode="fast"), ScoreConfig()).is_calibrated()
    assert not detector(InversionConfig(mode="fast"), ScoreConfig(smoothing_px=2.0)).is_calibrated()
    assert not detector(InversionConfig(mode="accurate", steps=20), ScoreConfig()).is_calibrated()


def test_calibrated_scores_are_raw_scores_over_the_threshold_at_the_models_false_positive_rate(
    calibrated_model,
):
    detector = GeneratorDetector("ours", calibrated_model, InversionConfig(mode="fast"), ScoreConfig())
    empty = np.zeros((20, 32, 32), dtype=bool)
    slices = SliceSet(
        empty.astype(np.float32), POSITIONS.astype(np.float32), ~empty, empty, empty,
        np.zeros(20, np.int64), np.arange(20), (CaseInfo("normal-0", "normal", 0),),
    )  # fmt: skip
    raw = Detection(maps=None, slice_scores=np.full(20, 3.9))
    ratio = detector.calibrated(slices, raw).slice_scores
    threshold = np.quantile(np.linspace(1.0, 2.0, 20), 0.95)  # default_fpr 0.05
    np.testing.assert_allclose(ratio, 3.9 / threshold, rtol=1e-3)


def test_a_model_with_a_head_has_no_calibration_for_its_residual(calibrated_model, tmp_path):
    """Its stored calibration is of the head's score; applied to the residual it would compare two scales."""
    from AnomalyScoutLib.anomaly_map.head import AnomalyHead, HeadConfig
    from AnomalyScoutLib.anomaly_map.training import attach_head

    model = AnomalyModel.load(calibrated_model)
    calibration = model.calibration
    attach_head(model, AnomalyHead(HeadConfig(channels=(4, 8))), {})
    model.calibration = calibration  # as if `calibrate` had run on the model with its head
    with_head = model.save(tmp_path / "with-head.safetensors")
    detector = GeneratorDetector("ours", with_head, InversionConfig(mode="fast"), ScoreConfig())
    assert not detector.is_calibrated()
