"""The segmentation-failure track's pieces: the review region, the failure metrics and the baselines' noise
(no MONAI needed: the segmenter itself is exercised by the benchmark run)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.monai_segmenter import augment_batch
from benchmarks.segfail_track import error_area, failure_metrics, review_region

torch.set_num_threads(1)


def test_review_region_grows_the_prediction_and_falls_back_to_the_body_where_none_was_found():
    predicted = np.zeros((2, 9, 9), dtype=bool)
    predicted[0, 4, 4] = True
    body = np.ones((2, 9, 9), dtype=bool)
    body[:, 0] = False
    region = review_region(predicted, body, 2)
    rows, cols = np.nonzero(region[0])
    assert region[0].sum() == 13 and abs(rows - 4).max() == 2 and abs(cols - 4).max() == 2  # a 2-px diamond
    np.testing.assert_array_equal(region[1], body[1])


def test_failure_metrics_rank_failed_slices_and_correlate_with_the_error_area():
    dice = np.array([0.95, 0.97, 0.5, 0.3, 0.99])
    error = np.array([10.0, 5.0, 200.0, 300.0, 1.0])
    perfect = failure_metrics(1.0 - dice, dice, error, 0.9, 100.0)
    assert perfect["failure_auroc"] == 1.0 and perfect["spearman_vs_error_area"] == 1.0
    assert failure_metrics(dice, dice, error, 0.9, 100.0)["failure_auroc"] == 0.0
    nothing_failed = failure_metrics(dice, np.ones(5), error, 0.9, 1000.0)
    assert nothing_failed["failure_auroc"] is None and nothing_failed["spearman_vs_1_minus_dice"] is None
    assert nothing_failed["failure_auroc_error_area"] is None


def test_the_review_bootstrap_resolves_a_risk_that_knows_from_one_that_guesses_and_pairs_the_cases():
    from benchmarks.segfail_track import REVIEW_RISKS, review_bootstrap

    rng = np.random.default_rng(0)
    case = np.repeat(np.arange(12), 10)
    failed = rng.random(case.size) < 0.3
    knows = failed + 0.1 * rng.random(case.size)
    guesses = rng.random(case.size)
    result = review_bootstrap(case, failed, {REVIEW_RISKS[0]: guesses, REVIEW_RISKS[1]: knows})
    low, high = result["difference_from_first_ci95"][REVIEW_RISKS[1]]
    assert low > 0.2 and result["mean_type_auroc_ci95"][REVIEW_RISKS[1]][0] > 0.9
    same = review_bootstrap(case, failed, {REVIEW_RISKS[0]: knows, REVIEW_RISKS[1]: knows})
    assert same["difference_from_first_ci95"][REVIEW_RISKS[1]] == [0.0, 0.0]  # paired: the same resamples
    assert review_bootstrap(case, failed, {REVIEW_RISKS[0]: knows}) is None


def test_the_area_rule_fails_the_slices_with_much_wrong_even_at_a_high_dice():
    # a small liver tip: low Dice, few wrong pixels; a large liver with a missed lesion: high Dice, many
    dice = np.array([0.5, 0.92, 0.97, 0.98])
    error = np.array([20.0, 400.0, 30.0, 25.0])
    by_area = failure_metrics(np.array([0.1, 0.9, 0.2, 0.3]), dice, error, 0.9, 100.0)
    assert by_area["failure_auroc_error_area"] == 1.0  # only the large error failed by area
    assert by_area["failure_auroc"] == 0.0  # the Dice rule calls the tip the failure
    np.testing.assert_array_equal(error_area(np.eye(3, dtype=bool)[None], np.zeros((1, 3, 3), bool)), [3.0])


def test_augmentation_moves_image_and_mask_together():
    images = -torch.ones(4, 1, 32, 32)
    images[:, :, 8:20, 6:18] = 0.5
    masks = (images > 0).float()
    moved, moved_masks = augment_batch(images, masks, torch.Generator().manual_seed(1))
    assert set(moved_masks.unique().tolist()) <= {0.0, 1.0}
    for image, mask in zip(moved, moved_masks):
        inside, outside = image[mask > 0], image[mask == 0]
        assert inside.mean() > outside.mean() + 0.8  # the bright square is still under its mask


def _head_model() -> Any:
    """A tiny random model with a tiny anomaly-map head (what the track scores as ``review`` does)."""
    from AnomalyScoutLib.anomaly_map.head import AnomalyHead, HeadConfig
    from AnomalyScoutLib.anomaly_map.training import attach_head
    from AnomalyScoutLib.model_file import AnomalyModel
    from AnomalyScoutLib.nets.architecture import ArchitectureConfig

    model = AnomalyModel.create(ArchitectureConfig(32, (16, 16, 8, 8), z_dim=16, w_dim=16), seed=0)
    torch.manual_seed(0)
    attach_head(model, AnomalyHead(HeadConfig(channels=(4, 8), top_fraction=0.05)), {})
    return model


def _slices_and_region(n: int = 4) -> tuple[Any, np.ndarray]:
    """``n`` random normal slices of one case at 32 px, and a square region in each."""
    from benchmarks.slices import CaseInfo, SliceSet

    rng = np.random.default_rng(0)
    slices = SliceSet(
        images=rng.uniform(-1, 1, (n, 32, 32)).astype(np.float32),
        positions=np.linspace(0.2, 0.8, n).astype(np.float32),
        body=np.ones((n, 32, 32), dtype=bool),
        anomaly=np.zeros((n, 32, 32), dtype=bool),
        organ=np.zeros((n, 32, 32), dtype=bool),
        case=np.zeros(n, dtype=np.int64),
        slice_index=np.arange(n),
        cases=(CaseInfo("normal-0", "normal", 0),),
    )
    region = np.zeros((n, 32, 32), dtype=bool)
    region[:, 8:24, 8:24] = True
    return slices, region


def _fitted(top: float, settings: dict[str, Any]) -> Any:
    """One position bin of normal scores spread evenly over [0, ``top``], made with ``settings``."""
    from AnomalyScoutLib.calibration import fit_mode_calibration

    normal, positions = np.linspace(0.0, top, 201), np.linspace(0, 1, 201)
    return fit_mode_calibration([normal], [positions], [0.5], settings, n_bins=1)


def _region_scores(
    model: Any, path: Path, slices: Any, region: np.ndarray, key: str
) -> dict[str, np.ndarray]:
    """The track's scores of ``model`` (saved to ``path``) in ``region``, as ``review`` reports them."""
    from AnomalyScoutLib.inversion import InversionConfig
    from AnomalyScoutLib.scoring import ScoreConfig
    from benchmarks import generator_runs, segfail_track
    from benchmarks.ours import GeneratorDetector

    detector = GeneratorDetector("ours", model.save(path), InversionConfig(mode="fast"), ScoreConfig())
    return segfail_track._head_region_scores(
        generator_runs.generator_run(detector, slices, key), slices, region
    )


def test_a_head_models_review_risk_is_the_riskier_calibrated_opinion_in_the_region(tmp_path, monkeypatch):
    """What ``review`` reports for a model with a head: the head's top-k inside the region, divided by the
    head's calibrated threshold at the slice's position; with a calibrated atlas, each at half the rate and
    the larger of the two."""
    from AnomalyScoutLib.calibration import (
        ATLAS_CALIBRATION_KEY,
        Calibration,
        calibration_key,
        calibration_settings,
    )
    from AnomalyScoutLib.position_atlas import AtlasConfig, PositionAtlas
    from AnomalyScoutLib.scoring import ScoreConfig
    from benchmarks import generator_runs, segfail_track

    monkeypatch.setattr(generator_runs, "WORK_DIR", tmp_path)
    model, (slices, region) = _head_model(), _slices_and_region()
    fitted = _fitted(1.0, calibration_settings(ScoreConfig().as_dict(), 0))
    risks = {}
    # The atlas's opinion counts only when its calibration was made with this atlas's settings (as scoring).
    model.atlas = PositionAtlas(AtlasConfig(bins=2), 32)
    model.metadata["position_atlas"] = model.atlas.metadata(1)
    atlas_fitted = _fitted(
        1.0, {**dataclasses.asdict(model.atlas.config), "case_top": ScoreConfig().case_top}
    )
    for with_atlas in (False, True):
        modes = {
            calibration_key("fast", "topk"): fitted,
            **({ATLAS_CALIBRATION_KEY: atlas_fitted} if with_atlas else {}),
        }
        model.calibration = Calibration(modes).to_json()
        scores = _region_scores(
            model, tmp_path / f"head-{with_atlas}.safetensors", slices, region, f"t-{with_atlas}"
        )
        raw = scores["ours fast (head), raw score, segmentation region"]
        atlas = scores["position atlas (the model's), raw score, segmentation region"]
        fpr = 0.005 if with_atlas else 0.01
        own = raw / fitted.bins[0].threshold(fpr)
        expected = np.fmax(own, atlas / atlas_fitted.bins[0].threshold(fpr)) if with_atlas else own
        np.testing.assert_allclose(scores[segfail_track.DEFAULT_SCORE], expected)
        risks[with_atlas] = own  # the head's own opinion
    assert (risks[True] < risks[False]).all()  # judged against the stricter threshold at half the rate
    assert (expected > own).any()  # the atlas is the riskier opinion on some slice


def test_review_in_denoise_mode_is_the_denoisers_calibrated_score_at_the_whole_rate(tmp_path, monkeypatch):
    """``review --mode denoise``: the denoiser's region score over its ``denoise`` calibration's threshold
    (no atlas here, so at the whole rate); in fast mode the denoiser is a second opinion at half of it."""
    from AnomalyScoutLib.calibration import (
        DENOISER_CALIBRATION_KEY,
        Calibration,
        calibration_key,
        calibration_settings,
    )
    from AnomalyScoutLib.denoiser import Denoiser, DenoiserConfig
    from AnomalyScoutLib.scoring import ScoreConfig
    from AnomalyScoutLib.train.denoiser import attach_denoiser
    from benchmarks import generator_runs, segfail_track

    monkeypatch.setattr(generator_runs, "WORK_DIR", tmp_path)
    model, (slices, region) = _head_model(), _slices_and_region()
    attach_denoiser(model, Denoiser(DenoiserConfig(channels=(4, 8))), {})
    settings = calibration_settings(ScoreConfig().as_dict(), 0)
    denoiser_settings = {**model.denoiser.config.to_dict(), "case_top": ScoreConfig().case_top}
    head_fit, denoise_fit, opinion_fit = (
        _fitted(1.0, settings),
        _fitted(0.5, settings),
        _fitted(0.25, denoiser_settings),
    )
    model.calibration = Calibration({calibration_key("fast", "topk"): head_fit,
                                     calibration_key("denoise", "topk"): denoise_fit,
                                     DENOISER_CALIBRATION_KEY: opinion_fit}).to_json()  # fmt: skip
    scores = _region_scores(model, tmp_path / "model.safetensors", slices, region, "test")
    denoiser = scores["denoiser (the model's), raw score, segmentation region"]
    np.testing.assert_allclose(
        scores[segfail_track.DENOISE_REVIEW_SCORE], denoiser / denoise_fit.bins[0].threshold(0.01), rtol=1e-6
    )
    head = scores["ours fast (head), raw score, segmentation region"]
    fast_risk = np.fmax(
        head / head_fit.bins[0].threshold(0.005), denoiser / opinion_fit.bins[0].threshold(0.005)
    )
    np.testing.assert_allclose(scores[segfail_track.DEFAULT_SCORE], fast_risk, rtol=1e-6)
