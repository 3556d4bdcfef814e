"""The coarse-noise denoiser: its network, its training (exact resume), the model file and the engine, where
it is a calibrated opinion beside the model's own score."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from fake_scorer import FakeScorer
from safetensors import safe_open
from safetensors.torch import save_file

from AnomalyScoutLib.anomaly_map.data import NormalSlices
from AnomalyScoutLib.calibration import (
    ATLAS_CALIBRATION_KEY,
    DENOISER_CALIBRATION_KEY,
    Calibration,
    calibration_key,
    fit_mode_calibration,
)
from AnomalyScoutLib.cli import main
from AnomalyScoutLib.denoiser import DENOISER_KEY, Denoiser, DenoiserConfig, coarse_noise
from AnomalyScoutLib.engine import CaseScores, ScoreOptions, VolumeScorer, _calibrate, score_file
from AnomalyScoutLib.errors import ConfigError, ModelFileError
from AnomalyScoutLib.inversion import InversionConfig
from AnomalyScoutLib.io.volume import Volume, write_volume
from AnomalyScoutLib.model_file import METADATA_KEY, AnomalyModel
from AnomalyScoutLib.scoring import ScoreConfig
from AnomalyScoutLib.train.denoiser import (
    DenoiserTrainer,
    DenoiserTrainingOptions,
    TrainingDivergedError,
    attach_denoiser,
)

SMALL = DenoiserConfig(channels=(4, 8))


def _slices(n: int = 12, side: int = 32) -> NormalSlices:
    """Smooth synthetic slices: a bright disc of varying size on a dark background, body everywhere."""
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    radius = torch.linspace(6, 12, n)[:, None, None]
    images = torch.where((yy - side / 2) ** 2 + (xx - side / 2) ** 2 < radius**2, 0.5, -0.5).float()
    body = torch.ones_like(images, dtype=torch.bool)
    return NormalSlices(images, torch.linspace(0, 1, n), body, torch.arange(n) % 3)


@pytest.mark.parametrize(
    "settings", [{"channels": (4,)}, {"stride": 3}, {"sigma": 0.0}, {"coarse": 0}, {"top_fraction": 0.0}]
)
def test_config_refuses_bad_settings(settings):
    with pytest.raises(ConfigError):
        DenoiserConfig(**settings)


def test_config_round_trips_and_refuses_unknown_keys():
    assert DenoiserConfig.from_dict(SMALL.to_dict()) == SMALL
    with pytest.raises(ConfigError, match="unknown denoiser settings: width"):
        DenoiserConfig.from_dict({**SMALL.to_dict(), "width": 3})


def test_coarse_noise_is_smooth_at_the_grid_scale_and_has_the_asked_level():
    noise = coarse_noise((64, 1, 64, 64), torch.Generator().manual_seed(0), coarse=4, sigma=0.4)
    assert noise.shape == (64, 1, 64, 64)
    assert 0.6 * 0.4 < noise.std().item() <= 0.4  # bilinear upsampling smooths a little off the drawn level
    twice = coarse_noise((64, 1, 64, 64), torch.Generator().manual_seed(0), coarse=4, sigma=0.8)
    torch.testing.assert_close(twice, 2 * noise)
    neighbours = noise[..., 1:] - noise[..., :-1]
    assert neighbours.abs().mean() < 0.1 * noise.abs().mean()  # 16 px cells: nearly constant pixel to pixel


def test_residual_maps_are_zero_outside_the_body_and_scores_read_the_top_of_the_body():
    denoiser = Denoiser(SMALL).eval()
    images = torch.rand(2, 32, 32) * 2 - 1
    body = torch.zeros(2, 32, 32, dtype=torch.bool)
    body[:, 8:24, 8:24] = True
    with torch.no_grad():
        maps = denoiser.residual_maps(images, body)
        scores = denoiser.slice_scores(images, body)
    assert maps.shape == (2, 32, 32) and (maps[~body] == 0).all() and (maps[body] > 0).any()
    for i in range(2):
        values = maps[i][body[i]].sort(descending=True).values
        top = values[: int(np.ceil(0.01 * int(body[i].sum())))]
        assert scores[i].item() == pytest.approx(float(top.mean()))
    with pytest.raises(ValueError, match="multiples of 4"):
        denoiser(torch.zeros(1, 30, 30))


def test_training_lowers_the_denoising_loss():
    torch.manual_seed(0)
    trainer = DenoiserTrainer(
        Denoiser(SMALL), _slices(), DenoiserTrainingOptions(steps=60, batch=4), torch.device("cpu")
    )
    first = [trainer.train_step() for _ in range(5)]
    trainer.train()
    last = [trainer.train_step() for _ in range(5)]
    assert np.mean(last) < 0.5 * np.mean(first)


def test_a_resumed_run_continues_exactly_as_an_uninterrupted_one(tmp_path):
    def trainer(folder, steps):
        torch.manual_seed(0)
        options = DenoiserTrainingOptions(steps=steps, batch=4)
        return DenoiserTrainer(Denoiser(SMALL), _slices(), options, torch.device("cpu"), run_folder=folder)

    straight = trainer(tmp_path / "straight", 6)
    straight.train()
    first = trainer(tmp_path / "split", 3)
    assert not first.resume()  # nothing to resume yet
    first.train()
    second = trainer(tmp_path / "split", 6)
    assert second.resume() and second.step == 3
    second.train()
    assert second.step == 6
    for name, tensor in straight.denoiser.state_dict().items():
        torch.testing.assert_close(second.denoiser.state_dict()[name], tensor, rtol=0, atol=0)
    rows = (tmp_path / "split" / "log.csv").read_text().splitlines()
    assert rows[0] == "step,loss,seconds" and [r.split(",")[0] for r in rows[1:]] == ["3", "6"]


def test_resuming_with_other_data_settings_is_refused_and_with_another_schedule_allowed(tmp_path):
    options = DenoiserTrainingOptions(steps=2, batch=4)
    DenoiserTrainer(Denoiser(SMALL), _slices(), options, torch.device("cpu"), run_folder=tmp_path).train()
    other = DenoiserTrainingOptions(steps=2, batch=4, shift=1)
    with pytest.raises(ConfigError, match="other settings"):
        DenoiserTrainer(Denoiser(SMALL), _slices(), other, torch.device("cpu"), run_folder=tmp_path).resume()
    slower = DenoiserTrainingOptions(steps=3, batch=4, lr=1e-4, lr_halflife=0, grad_clip=0.5)
    trainer = DenoiserTrainer(Denoiser(SMALL), _slices(), slower, torch.device("cpu"), run_folder=tmp_path)
    assert trainer.resume() and trainer.step == 2
    trainer.train()
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_the_rate_halves_every_halflife_and_the_gradient_is_clipped():
    options = DenoiserTrainingOptions(lr=1e-3, lr_halflife=100, grad_clip=1e-3, batch=4)
    assert [options.learning_rate(t) for t in (0, 100, 200)] == pytest.approx([1e-3, 5e-4, 2.5e-4])
    assert DenoiserTrainingOptions(lr_halflife=0).learning_rate(10**6) == pytest.approx(1e-3)

    def applied_gradient_norm(options: DenoiserTrainingOptions) -> float:
        torch.manual_seed(0)
        trainer = DenoiserTrainer(Denoiser(SMALL), _slices(), options, torch.device("cpu"))
        trainer.train_step()
        norms = [parameter.grad.norm() for parameter in trainer.denoiser.parameters()]
        return float(torch.linalg.vector_norm(torch.stack(norms)))

    assert applied_gradient_norm(options) <= 1e-3 * (1 + 1e-5)
    unclipped = DenoiserTrainingOptions(grad_clip=0, batch=4)
    assert applied_gradient_norm(unclipped) > 1e-2  # the clip did the work


def test_each_step_draws_its_noise_grid_from_the_given_sides_and_none_without_them(tmp_path):
    options = DenoiserTrainingOptions(batch=4, noise_grids=(4, 16))
    trainer = DenoiserTrainer(Denoiser(SMALL), _slices(), options, torch.device("cpu"))
    assert {trainer._noise_grid() for _ in range(40)} == {4, 16}
    plain = DenoiserTrainer(Denoiser(SMALL), _slices(), DenoiserTrainingOptions(batch=4), torch.device("cpu"))
    before = plain.generator.get_state()
    assert plain._noise_grid() == SMALL.coarse
    assert torch.equal(plain.generator.get_state(), before)  # an older run's draws are unchanged
    with pytest.raises(ConfigError, match="noise grid"):
        DenoiserTrainingOptions(noise_grids=(0,))
    trainer = DenoiserTrainer(Denoiser(SMALL), _slices(), options, torch.device("cpu"), run_folder=tmp_path)
    trainer._checkpoint([0.1], 1.0)
    other = DenoiserTrainingOptions(batch=4, noise_grids=(8,))
    with pytest.raises(ConfigError, match="other settings"):
        DenoiserTrainer(Denoiser(SMALL), _slices(), other, torch.device("cpu"), run_folder=tmp_path).resume()


def test_a_diverging_run_stops_and_keeps_its_last_sound_checkpoint(tmp_path):
    options = DenoiserTrainingOptions(steps=4, batch=4, checkpoint_minutes=1e-9)
    trainer = DenoiserTrainer(Denoiser(SMALL), _slices(), options, torch.device("cpu"), run_folder=tmp_path)
    trainer.train()
    sound = (tmp_path / "checkpoint.safetensors").read_bytes()
    losses = iter([trainer.last_loss, 1e3 * trainer.last_loss])  # a tenfold jump in the second window

    def jumping_step() -> float:
        trainer.step += 1
        return next(losses)

    trainer.train_step = jumping_step
    trainer.options = DenoiserTrainingOptions(steps=6, batch=4, checkpoint_minutes=1e-9)
    with pytest.raises(TrainingDivergedError, match="diverged.*lower --lr"):
        trainer.train()
    assert (tmp_path / "checkpoint.safetensors").read_bytes() != sound  # the step-5 window was sound
    resumed = DenoiserTrainer(Denoiser(SMALL), _slices(), options, torch.device("cpu"), run_folder=tmp_path)
    assert resumed.resume() and resumed.step == 5


@pytest.fixture(scope="module")
def denoiser_model(tiny_model_file, tiny_phantom, tmp_path_factory):
    """The tiny model with a denoiser trained by the command on the tiny normal phantom, then calibrated."""
    folder = tmp_path_factory.mktemp("denoiser")
    write_volume(tiny_phantom.volume, folder / "normal.nrrd")
    with_denoiser = folder / "with-denoiser.safetensors"
    argv = ["train-denoiser", "--model", str(tiny_model_file), "--data", str(folder / "normal.nrrd"),
            "--run", str(folder / "run"), "--out", str(with_denoiser), "--steps", "4", "--batch", "2",
            "--channels", "4", "8", "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    calibrated = folder / "calibrated.safetensors"
    argv = ["calibrate", "--model", str(with_denoiser), "--out", str(calibrated), "--phantom", "2",
            "--phantom-shape", "64,64,24", "--modes", "fast,denoise", "--bins", "2",
            "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    return with_denoiser, calibrated


def test_the_command_writes_the_model_with_its_denoiser_and_record(denoiser_model, tiny_model_file):
    with_denoiser, _ = denoiser_model
    model, plain = AnomalyModel.load(with_denoiser), AnomalyModel.load(tiny_model_file)
    assert model.denoiser is not None and model.denoiser.config.channels == (4, 8)
    record = model.metadata[DENOISER_KEY]["training"]
    assert record["steps_done"] == 4 and record["options"]["batch"] == 2 and record["training_slices"] > 0
    for name, tensor in plain.generator.state_dict().items():  # unchanged, stored in float16 (the default)
        torch.testing.assert_close(model.generator.state_dict()[name], tensor.half().float())


def test_calibrate_stores_the_denoiser_distributions(denoiser_model):
    _, calibrated = denoiser_model
    modes = Calibration.from_json(AnomalyModel.load(calibrated).calibration).modes
    entry = modes[DENOISER_CALIBRATION_KEY]
    assert entry.n_cases == 2 and entry.score_config["channels"] == [4, 8]
    assert "case_top" in entry.score_config
    assert calibration_key("fast", "topk") in modes


def test_scoring_judges_the_denoiser_as_a_second_opinion(denoiser_model, tiny_anomalous_phantom, tmp_path):
    _, calibrated = denoiser_model
    scorer = VolumeScorer(
        AnomalyModel.load(calibrated), InversionConfig(mode="fast"), ScoreConfig(), torch.device("cpu")
    )
    assert scorer.opinions() == 2
    write_volume(tiny_anomalous_phantom.volume, tmp_path / "ct.nrrd")
    run = score_file(tmp_path / "ct.nrrd", tmp_path / "out", scorer, ScoreOptions(position="index", fpr=0.4))
    data = json.loads((tmp_path / "out" / "scores.json").read_text())
    scores = np.array([s["denoiser_score"] for s in data["slices"]])
    np.testing.assert_allclose(scores, run.case.denoiser, rtol=1e-6)
    assert (scores > 0).all() and np.ptp(scores) > 0  # each slice's own residual
    # each opinion at half the rate; a slice is flagged when either flags it (the envelope aside)
    main_only = scorer.mode_calibration().apply(run.case.scores, run.case.positions, 0.0, data["fpr"] / 2)
    second = scorer.opinion_calibration(DENOISER_CALIBRATION_KEY)
    denoiser_only = second.apply(run.case.denoiser, run.case.positions, 0.0, data["fpr"] / 2)
    flagged = np.array([s["flagged"] for s in data["slices"]])
    metal = scorer.envelope.flags(run.case.beyond_mm2)
    np.testing.assert_array_equal(flagged & ~metal, (main_only.flagged | denoiser_only.flagged) & ~metal)
    # each slice names the opinion whose score is furthest over its threshold
    riskier = run.case.denoiser / denoiser_only.threshold > run.case.scores / main_only.threshold
    expected = np.where(riskier, "denoiser", "residual").tolist()
    assert [s["riskiest_opinion"] for s in data["slices"]] == expected and len(set(expected)) == 2


def test_review_risk_is_the_riskier_opinion_and_above_one_exactly_where_flagged(
    denoiser_model, tiny_anomalous_phantom, tmp_path
):
    _, calibrated = denoiser_model
    volume = tiny_anomalous_phantom.volume
    write_volume(volume, tmp_path / "ct.nrrd")
    body = (tiny_anomalous_phantom.labels > 0).astype(np.uint8)
    write_volume(Volume(body, volume.spacing_xyz, volume.origin_xyz, volume.direction), tmp_path / "seg.nrrd")
    out = tmp_path / "review"
    argv = ["review", str(tmp_path / "ct.nrrd"), "--segmentation", str(tmp_path / "seg.nrrd"),
            "--out", str(out), "--model", str(calibrated), "--fpr", "0.4", "--device", "cpu",
            "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    slices = json.loads((out / "scores.json").read_text())["slices"]
    scorer = VolumeScorer(
        AnomalyModel.load(calibrated), InversionConfig(mode="fast"), ScoreConfig(), torch.device("cpu")
    )
    denoiser = np.array([s["denoiser_score"] for s in slices])
    positions = np.array([s["position"] for s in slices])
    calibration = scorer.opinion_calibration(DENOISER_CALIBRATION_KEY)
    denoiser_threshold = calibration.apply(denoiser, positions, 0.0, 0.2).threshold
    own = np.array([s["score"] / s["threshold"] for s in slices])
    with open(out / "review.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    risk = np.array([float(r["risk"]) for r in rows])
    finite = np.isfinite(risk)  # metal slices are inf whatever the opinions say
    np.testing.assert_allclose(risk[finite], np.fmax(own, denoiser / denoiser_threshold)[finite], rtol=1e-5)
    assert (denoiser / denoiser_threshold > own)[finite].any()  # the denoiser is the riskier one somewhere
    assert [r["flagged"] == "1" for r in rows] == (risk > 1.0).tolist()


def test_denoise_mode_scores_each_slice_by_the_denoisers_residual_without_the_generator(
    denoiser_model, tiny_anomalous_phantom, tmp_path
):
    _, calibrated = denoiser_model
    model = AnomalyModel.load(calibrated)
    fast, denoise = (
        VolumeScorer(model, InversionConfig(mode=mode), ScoreConfig(), torch.device("cpu"))
        for mode in ("fast", "denoise")
    )
    assert (fast.opinions(), denoise.opinions()) == (2, 1)  # in denoise mode the denoiser is the score
    write_volume(tiny_anomalous_phantom.volume, tmp_path / "ct.nrrd")
    options = ScoreOptions(position="index", fpr=0.4)
    by_fast = score_file(tmp_path / "ct.nrrd", tmp_path / "fast", fast, options)
    run = score_file(tmp_path / "ct.nrrd", tmp_path / "denoise", denoise, options)
    np.testing.assert_allclose(run.case.scores, by_fast.case.denoiser, rtol=1e-5)  # the opinion's score
    assert run.case.denoiser is None and np.ptp(run.case.scores) > 0
    data = json.loads((tmp_path / "denoise" / "scores.json").read_text())
    assert data["mode"] == "denoise" and data["calibrated"]  # by the model's denoise calibration
    assert all(s["denoiser_score"] is None for s in data["slices"])
    calibration = Calibration.from_json(model.calibration).for_run("denoise", ScoreConfig(), 0)
    expected = calibration.apply(run.case.scores, run.case.positions, 0.0, 0.4).threshold
    thresholds = np.array([s["threshold"] for s in data["slices"]])
    np.testing.assert_allclose(thresholds, expected, rtol=1e-6)  # its own calibration, at the whole rate
    assert not (tmp_path / "denoise" / "anomaly_map.nrrd").exists()  # the residual is the heatmap
    assert (tmp_path / "denoise" / "residual.nrrd").is_file()


def test_denoise_mode_without_a_denoiser_is_one_clear_line(tiny_model_file, tiny_phantom, tmp_path, capsys):
    with pytest.raises(ConfigError, match="denoise.*needs a model with a denoiser"):
        VolumeScorer(
            AnomalyModel.load(tiny_model_file),
            InversionConfig(mode="denoise"),
            ScoreConfig(),
            torch.device("cpu"),
        )
    write_volume(tiny_phantom.volume, tmp_path / "ct.nrrd")
    argv = ["score", str(tmp_path / "ct.nrrd"), "--out", str(tmp_path / "out"),
            "--model", str(tiny_model_file),
            "--mode", "denoise", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a model with a denoiser" in err[0] and not (tmp_path / "out").exists()


def test_calibrate_adds_the_denoise_mode_for_a_model_with_a_denoiser(denoiser_model, tmp_path):
    with_denoiser, _ = denoiser_model
    out = tmp_path / "calibrated.safetensors"
    argv = ["calibrate", "--model", str(with_denoiser), "--out", str(out), "--phantom", "1",
            "--phantom-shape", "64,64,24", "--bins", "2", "--steps", "1", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    modes = Calibration.from_json(AnomalyModel.load(out).calibration).modes
    assert {"fast/topk", "accurate/topk", "denoise/topk", DENOISER_CALIBRATION_KEY} <= set(modes)


def test_an_uncalibrated_denoiser_is_left_out_with_a_warning(
    denoiser_model, tiny_anomalous_phantom, tmp_path
):  # noqa: E501
    _, calibrated = denoiser_model
    model = AnomalyModel.load(calibrated)
    attach_denoiser(model, model.denoiser, {})  # a new denoiser: its old calibration must go
    model.save(tmp_path / "stale.safetensors")
    modes = Calibration.from_json(AnomalyModel.load(tmp_path / "stale.safetensors").calibration).modes
    assert DENOISER_CALIBRATION_KEY not in modes and calibration_key("fast", "topk") in modes
    scorer = VolumeScorer(
        AnomalyModel.load(tmp_path / "stale.safetensors"),
        InversionConfig(mode="fast"),
        ScoreConfig(),
        torch.device("cpu"),
    )
    assert scorer.opinions() == 1
    listener = _Warnings()
    write_volume(tiny_anomalous_phantom.volume, tmp_path / "ct.nrrd")
    score_file(
        tmp_path / "ct.nrrd", tmp_path / "out", scorer, ScoreOptions(position="index"), listener=listener
    )
    assert any("denoiser has no calibration" in w for w in listener.messages)
    slices = json.loads((tmp_path / "out" / "scores.json").read_text())["slices"]
    assert all(s["riskiest_opinion"] is None for s in slices)  # one opinion judged: nothing to name


def test_the_command_refuses_an_output_folder_that_does_not_exist(tiny_model_file, tmp_path, capsys):
    out = tmp_path / "no" / "m.safetensors"
    argv = ["train-denoiser", "--model", str(tiny_model_file), "--data", str(tmp_path), "--run",
            str(tmp_path / "run"), "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert main(argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out: folder" in err[0] and "does not exist" in err[0]


class _Warnings:
    """A run listener that keeps the warnings."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def started(self, *args) -> None:
        pass

    def progress(self, *args) -> None:
        pass

    def warning(self, message: str) -> None:
        self.messages.append(message)


@pytest.mark.parametrize("denoiser_calibrated", [True, False])
def test_with_atlas_and_denoiser_each_calibrated_opinion_gets_its_share_of_the_rate(
    monkeypatch, denoiser_calibrated
):
    normal = np.linspace(0.0, 1.0, 3001)  # thresholds: 0.95 at a rate of 0.05, 0.9667 at 0.0333
    positions = np.full(normal.size, 0.5)
    fit = fit_mode_calibration([normal], [positions], [0.5], {"m": 1}, n_bins=1)
    keys = (ATLAS_CALIBRATION_KEY, DENOISER_CALIBRATION_KEY)
    calibrated_opinions = {key: fit for key in keys if key == ATLAS_CALIBRATION_KEY or denoiser_calibrated}

    monkeypatch.setattr(Calibration, "for_run", lambda self, mode, score, steps: fit)  # settings apart
    monkeypatch.setattr("AnomalyScoutLib.engine.OPINION_NAMES", dict.fromkeys(keys, "opinion"))
    # slice 0: the model's score between the thresholds; 1: the denoiser's above both; 2: the atlas's
    case = CaseScores(np.full(3, 0.5), np.array([0.955, 0.1, 0.1]), np.zeros(3), np.zeros(3), None,
                      atlas=np.array([0.1, 0.1, 0.98]), denoiser=np.array([0.1, 0.98, 0.1]))  # fmt: skip
    listener = _Warnings()
    calibrated, _, _ = _calibrate(
        FakeScorer(fit, calibrated_opinions), case, (0.5, dict.fromkeys(keys, 0.5)), 0.1, listener
    )
    if denoiser_calibrated:  # three opinions, each at a third of the rate
        assert calibrated.flagged.tolist() == [False, True, True] and not listener.messages
    else:  # two, each at half; the denoiser is left out, and said so
        assert calibrated.flagged.tolist() == [True, False, True]
        assert listener.messages == ["the model's opinion has no calibration: its score is left out of the "
                                     "flags (run `anomalyscout calibrate`)"]  # fmt: skip


def test_a_model_file_with_a_broken_denoiser_entry_is_refused_naming_it(denoiser_model, tmp_path):
    with_denoiser, _ = denoiser_model
    with safe_open(str(with_denoiser), framework="pt") as handle:
        header = json.loads(handle.metadata()[METADATA_KEY])
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - not a dict
    header[DENOISER_KEY]["config"]["stride"] = 3
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata={METADATA_KEY: json.dumps(header)})
    with pytest.raises(ModelFileError, match="invalid denoiser settings: denoiser stride must be 1, 2 or 4"):
        AnomalyModel.load(broken)
