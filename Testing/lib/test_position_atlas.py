"""The position atlas: its statistics, its place in the model file, ``fit-atlas``, its calibration, and the
two opinions combined at half the false-positive rate each."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fake_scorer import FakeScorer

from AnomalyScoutLib.calibration import (
    ATLAS_CALIBRATION_KEY,
    CalibratedScores,
    Calibration,
    combine_opinions,
)
from AnomalyScoutLib.cli import main
from AnomalyScoutLib.engine import ScoreOptions, VolumeScorer, score_file
from AnomalyScoutLib.errors import ConfigError, ModelFileError
from AnomalyScoutLib.inversion import InversionConfig
from AnomalyScoutLib.io.volume import write_volume
from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.position_atlas import METADATA_KEY, AtlasAccumulator, AtlasConfig, PositionAtlas
from AnomalyScoutLib.scoring import ScoreConfig

torch.set_num_threads(1)


def test_the_atlas_holds_the_mean_and_spread_of_slices_near_each_position_with_a_floor():
    config = AtlasConfig(bins=4, bandwidth=0.01, std_floor=0.05)
    accumulator = AtlasAccumulator(config, 8)
    low = torch.stack([torch.full((8, 8), 0.2), torch.full((8, 8), 0.6)])  # two slices at 0.1
    accumulator.add(low, torch.tensor([0.1, 0.1]))
    accumulator.add(torch.full((1, 8, 8), -0.5), torch.tensor([0.9]))
    atlas = accumulator.atlas()
    torch.testing.assert_close(atlas.mean[0], torch.full((8, 8), 0.4))
    torch.testing.assert_close(atlas.std[0], torch.full((8, 8), 0.2))
    torch.testing.assert_close(atlas.mean[3], torch.full((8, 8), -0.5))
    torch.testing.assert_close(atlas.std[3], torch.full((8, 8), 0.05))  # no spread: the floor
    # |z| against the nearest bin: 0.6 at position 0.05 is one spread above its bin's mean
    z = atlas.z_maps(torch.full((1, 8, 8), 0.6), torch.tensor([0.05]))
    torch.testing.assert_close(z, torch.ones(1, 8, 8))
    with pytest.raises(ConfigError, match="at least one"):
        AtlasAccumulator(config, 8).atlas()
    with pytest.raises(ConfigError, match="atlas slices"):
        accumulator.add(torch.zeros(2, 4, 4), torch.zeros(2))


def test_a_slice_unlike_its_position_scores_above_one_like_it():
    accumulator = AtlasAccumulator(AtlasConfig(bins=2, top_fraction=0.05), 16)
    rng = torch.Generator().manual_seed(0)
    accumulator.add(0.1 * torch.randn(20, 16, 16, generator=rng), torch.full((20,), 0.25))
    atlas = accumulator.atlas()
    normal = 0.1 * torch.randn(1, 16, 16, generator=rng)
    odd = normal.clone()
    odd[0, 4:8, 4:8] = 0.9
    area = torch.ones(2, 16, 16, dtype=torch.bool)
    scores = atlas.slice_scores(torch.cat([normal, odd]), torch.tensor([0.25, 0.25]), area)
    assert scores[1] > 3 * scores[0]


def test_the_model_file_keeps_the_atlas_and_refuses_a_malformed_one(tiny_architecture, tmp_path):
    model = AnomalyModel.create(tiny_architecture, seed=0)
    accumulator = AtlasAccumulator(AtlasConfig(bins=3), 32)
    accumulator.add(torch.rand(5, 32, 32) * 2 - 1, torch.linspace(0, 1, 5))
    model.atlas = accumulator.atlas()
    model.metadata[METADATA_KEY] = model.atlas.metadata(volumes=1)
    for half in (False, True):
        loaded = AnomalyModel.load(model.save(tmp_path / f"m{half}.safetensors", half=half))
        assert loaded.atlas is not None and loaded.atlas.config == AtlasConfig(bins=3)
        torch.testing.assert_close(loaded.atlas.mean, model.atlas.mean, atol=1e-3 if half else 0, rtol=1e-3)
    model.metadata[METADATA_KEY] = {"config": {"bins": 0}}
    bad = model.save(tmp_path / "bad.safetensors")
    with pytest.raises(ModelFileError, match="position atlas"):
        AnomalyModel.load(bad)
    del model.metadata[METADATA_KEY]
    stray = model.save(tmp_path / "stray.safetensors")  # atlas tensors without their metadata
    with pytest.raises(ModelFileError, match="unexpected tensors atlas"):
        AnomalyModel.load(stray)


def test_two_opinions_flag_what_either_flags_and_keep_the_larger_percentile():
    first = CalibratedScores(
        np.array([99.8, 10.0, 50.0]), np.ones(3), np.array([True, False, False]), 60.0, 1.0, False,
        exceedance=np.array([1.5, 0.2, 0.8]),
    )  # fmt: skip
    second = CalibratedScores(
        np.array([20.0, 99.9, np.nan]), np.zeros(3), np.array([False, True, False]), 99.9, 0.0, True,
        exceedance=np.array([0.3, 2.0, np.nan]),
    )  # fmt: skip
    both = combine_opinions(first, second)
    assert both.flagged.tolist() == [True, True, False] and both.case_flagged
    assert both.percentile.tolist() == [99.8, 99.9, 50.0] and both.case_percentile == 99.9
    assert both.exceedance.tolist() == [1.5, 2.0, 0.8]  # the riskier opinion's, as the flags say
    assert both.threshold.tolist() == [1.0, 1.0, 1.0]


@pytest.fixture(scope="module")
def atlas_model(tiny_model_file, tiny_phantom, tmp_path_factory):
    """The tiny model with an atlas of the tiny normal phantom, then calibrated on 2 other phantoms."""
    folder = tmp_path_factory.mktemp("atlas")
    write_volume(tiny_phantom.volume, folder / "normal.nrrd")
    with_atlas = folder / "with-atlas.safetensors"
    argv = ["fit-atlas", "--model", str(tiny_model_file), "--data", str(folder / "normal.nrrd"),
            "--out", str(with_atlas), "--bins", "4"]  # fmt: skip
    assert main(argv) == 0
    calibrated = folder / "calibrated.safetensors"
    argv = ["calibrate", "--model", str(with_atlas), "--out", str(calibrated), "--phantom", "2",
            "--phantom-shape", "64,64,24", "--modes", "fast", "--bins", "2", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    return with_atlas, calibrated


def test_fit_atlas_then_calibrate_stores_the_atlas_and_its_score_distributions(atlas_model, tiny_model_file):
    with_atlas, calibrated = atlas_model
    model = AnomalyModel.load(with_atlas)
    assert model.atlas is not None and model.metadata[METADATA_KEY]["volumes"] == 1
    assert model.model_id != AnomalyModel.load(tiny_model_file).model_id
    entry = Calibration.from_json(AnomalyModel.load(calibrated).calibration).modes[ATLAS_CALIBRATION_KEY]
    assert entry.n_cases == 2 and entry.score_config["bins"] == 4 and entry.score_config["case_top"] == 3


def test_scoring_with_a_calibrated_atlas_combines_both_opinions(
    atlas_model, tiny_anomalous_phantom, tmp_path
):
    _, calibrated = atlas_model
    scorer = VolumeScorer(
        AnomalyModel.load(calibrated), InversionConfig(mode="fast"), ScoreConfig(), torch.device("cpu")
    )
    write_volume(tiny_anomalous_phantom.volume, tmp_path / "ct.nrrd")
    # A high rate, so that half of it and all of it flag different slices.
    run = score_file(tmp_path / "ct.nrrd", tmp_path / "out", scorer, ScoreOptions(position="index", fpr=0.4))
    data = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert all(s["atlas_score"] is not None for s in data["slices"])
    main_only = scorer.mode_calibration().apply(run.case.scores, run.case.positions, 0.0, data["fpr"] / 2)
    atlas_calibration = scorer.opinion_calibration(ATLAS_CALIBRATION_KEY)
    atlas_only = atlas_calibration.apply(run.case.atlas, run.case.positions, 0.0, data["fpr"] / 2)
    metal = scorer.envelope.flags(run.case.beyond_mm2)  # the clip's slice: flagged by the envelope
    assert metal.sum() == 1
    expected = np.where(metal, 100.0, np.fmax(main_only.percentile, atlas_only.percentile))
    np.testing.assert_allclose([s["percentile"] for s in data["slices"]], expected)
    flagged = main_only.flagged | atlas_only.flagged | metal
    assert [s["flagged"] for s in data["slices"]] == flagged.tolist()


def test_refitting_the_atlas_drops_the_old_atlas_calibration(atlas_model, tiny_phantom, tmp_path):
    _, calibrated = atlas_model
    write_volume(tiny_phantom.volume, tmp_path / "normal.nrrd")
    out = tmp_path / "refit.safetensors"
    assert (
        main(
            [
                "fit-atlas",
                "--model",
                str(calibrated),
                "--data",
                str(tmp_path / "normal.nrrd"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    modes = Calibration.from_json(AnomalyModel.load(out).calibration).modes
    assert ATLAS_CALIBRATION_KEY not in modes and "fast/topk" in modes
    assert isinstance(AnomalyModel.load(out).atlas, PositionAtlas)

    # Scored with the refitted atlas (its calibration dropped): the reconstruction's opinion alone, said once.
    warnings: list[str] = []

    class Listener:
        def started(self, *args) -> None: ...
        def progress(self, *args) -> None: ...
        def warning(self, message: str) -> None:
            warnings.append(message)

    scorer = VolumeScorer(
        AnomalyModel.load(out), InversionConfig(mode="fast"), ScoreConfig(), torch.device("cpu")
    )
    run = score_file(
        out_ct := tmp_path / "normal.nrrd",
        tmp_path / "scored",
        scorer,
        ScoreOptions(position="index"),
        listener=Listener(),
    )
    assert out_ct.is_file() and sum("position atlas has no calibration" in w for w in warnings) == 1
    alone = scorer.mode_calibration().apply(run.case.scores, run.case.positions, run.case_score, 0.01)
    np.testing.assert_allclose(run.calibrated.percentile, alone.percentile)


def test_each_opinion_is_judged_at_half_the_rate(monkeypatch):
    from AnomalyScoutLib.calibration import fit_mode_calibration
    from AnomalyScoutLib.engine import CaseScores, _calibrate

    normal = np.linspace(0.0, 1.0, 1001)  # thresholds: 0.9 at a rate of 0.1, 0.95 at 0.05
    positions = np.full(normal.size, 0.5)
    main_fit = fit_mode_calibration([normal], [positions], [0.5], {"m": 1}, n_bins=1)
    atlas_fit = fit_mode_calibration([normal], [positions], [0.5], {"a": 1}, n_bins=1)

    monkeypatch.setattr(Calibration, "for_run", lambda self, mode, score, steps: main_fit)  # settings apart
    # slice 0: the reconstruction's score between the two thresholds, slice 1 the atlas's, slice 2 both above
    case = CaseScores(np.full(3, 0.5), np.array([0.92, 0.1, 0.97]), np.zeros(3), np.zeros(3), None,
                      np.array([0.1, 0.92, 0.97]))  # fmt: skip
    calibrated, by_model, fpr = _calibrate(
        FakeScorer(main_fit, {ATLAS_CALIBRATION_KEY: atlas_fit}),
        case,
        (0.5, {ATLAS_CALIBRATION_KEY: 0.5}),
        0.1,
        None,
    )
    assert by_model and fpr == 0.1
    assert calibrated.flagged.tolist() == [False, False, True]
