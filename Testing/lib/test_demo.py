"""``anomalyscout demo``: the README's first command, with the tiny model (plumbing) and the shipped one."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch

from AnomalyScoutLib.cli import main
from AnomalyScoutLib.commands.demo import slice_agreement

torch.set_num_threads(1)


def test_slice_agreement_counts_flags_against_the_truth():
    truth = np.array([True, True, False, False, False])
    flagged = np.array([True, False, True, False, False])
    result = slice_agreement(truth, flagged, np.array([0.9, 0.8, 0.7, 0.1, 0.2]))
    assert result["sensitivity"] == 0.5 and result["specificity"] == pytest.approx(2 / 3)
    assert result["true_positives"] == 1 and result["false_positives"] == 1 and result["auroc"] == 1.0


def test_slice_agreement_without_anomalous_slices_has_no_auroc():
    result = slice_agreement(np.zeros(3, bool), np.zeros(3, bool), np.arange(3.0))
    assert np.isnan(result["auroc"]) and np.isnan(result["sensitivity"]) and result["specificity"] == 1.0


def test_the_demo_writes_its_phantom_outputs_and_report(tiny_model_file, tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path / "demo"), "--model", str(tiny_model_file), "--device", "cpu"])
    assert code == 0
    names = {p.name for p in (tmp_path / "demo").iterdir()}
    assert {
        "phantom_ct.nrrd",
        "phantom_truth.nrrd",
        "demo_report.json",
        "flagged.png",
        "scores.json",
    } <= names
    report = json.loads((tmp_path / "demo" / "demo_report.json").read_text())
    assert report["true_slices"] and report["anomalous_slices"] == len(report["true_slices"])
    assert "sensitivity" in capsys.readouterr().out


def test_with_the_shipped_model_anomalous_slices_score_above_normal_ones_and_are_flagged(tmp_path):
    """The demo's full targets. A strict xfail until 2026-12-08 (eighth work period): the demo ranked slices
    by the head's score alone, while its flags heard the atlas and the denoiser too. Ranked by the riskiest
    calibrated opinion, as the flags judge (``CalibratedScores.exceedance``), the shipped model passes."""
    assert main(["demo", "--out", str(tmp_path / "demo"), "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "demo" / "demo_report.json").read_text())
    slices = json.loads((tmp_path / "demo" / "scores.json").read_text())["slices"]
    relative = {s["slice_index"]: s["score"] / s["threshold"] for s in slices}
    anomalous = [relative[k] for k in report["true_slices"]]
    normal = [v for k, v in relative.items() if k not in report["true_slices"]]
    assert np.median(anomalous) > np.median(normal)
    assert report["auroc"] > 0.7
    assert report["true_positives"] >= 1 and report["true_positives"] > report["false_positives"]


def test_with_the_shipped_model_the_demo_flags_anomalous_slices_and_no_normal_one(tmp_path):
    """What the model before the head and the atlas did not do: on the demo phantom (seed 7: tumour, metal
    clip, blob) it flagged none of the 14 anomalous slices. The shipped model flags some, and no normal
    slice (the full targets, above, are still missed)."""
    assert main(["demo", "--out", str(tmp_path / "demo"), "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "demo" / "demo_report.json").read_text())
    assert report["true_positives"] >= 3 and report["false_positives"] == 0


@pytest.mark.parametrize("seed", [0, 7])
def test_with_the_shipped_model_metal_raises_the_slices_it_touches_above_their_normal_twin(seed):
    """The engine end to end with the shipped model, free of the position and patient confounds that sink the
    test above: the same phantom with and without a metal clip (and its streaks), scored slice by slice.
    Streaks change every slice they cross by tens of HU, so each of those slices must leave a higher
    residual (``pixel``, the reconstruction's part of the score) than the same slice of the anomaly-free
    twin. (The shipped model's slice *score* is its anomaly-map head's, which does not rank every streak
    slice above its twin: metal is its weakest type, docs/benchmarks.md, section 10.) Bright metal raises
    the residual against any reconstruction, even a flat one, so the model must also show that it learned
    anatomy: refined, it draws the normal twin better than the best flat image (the body's median), and
    its encoder reads each slice better than the typical slice at its position: what a model that learned
    nothing fails."""
    from AnomalyScoutLib.engine import VolumeScorer
    from AnomalyScoutLib.inversion import InversionConfig
    from AnomalyScoutLib.model_file import DEFAULT_MODEL_PATH, AnomalyModel
    from AnomalyScoutLib.phantom import make_phantom
    from AnomalyScoutLib.scoring import ScoreConfig

    model = AnomalyModel.load(DEFAULT_MODEL_PATH, "cpu")
    scorer = VolumeScorer(model, InversionConfig("fast"), ScoreConfig(), torch.device("cpu"))
    with_metal = make_phantom(seed, shape_xyz=(96, 96, 32), anomalies=("metal",))
    twin = make_phantom(seed, shape_xyz=(96, 96, 32))
    sx, sy, sz = twin.volume.spacing_xyz
    touched = with_metal.anomaly_mask.any(axis=(1, 2))
    assert touched.any() and not twin.anomaly_mask.any()
    anomalous = scorer.score(with_metal.volume.array_zyx, (sz, sy, sx)).pixel
    normal = scorer.score(twin.volume.array_zyx, (sz, sy, sx)).pixel
    assert (anomalous[touched] > normal[touched]).all()
    np.testing.assert_allclose(anomalous[~touched], normal[~touched], rtol=1e-6)
    # The mean residual over the body says how well anatomy is reconstructed (median over slices; the top-5 %
    # residual is no measure of it: the lung bases are weak). Each network is held to what it is for: the
    # generator, given the refinement, must draw the normal twin better than the best flat image; the
    # encoder must read the slice, so that fast mode beats the typical slice at each position (the mean
    # latent, what an encoder that learned nothing returns). Fast mode alone need not beat the flat image:
    # the shipped encoder's codes are held near the typical slice on purpose (models/README.md), which costs
    # fidelity and keeps lesions out of the reconstruction.
    mean_error = ScoreConfig(top_fraction=1.0)
    typical_model = AnomalyModel.load(DEFAULT_MODEL_PATH, "cpu")
    typical_model.encoder.constrain(offset_scale=0.0)
    flat = VolumeScorer(model, InversionConfig("fast"), mean_error, torch.device("cpu"))
    flat.reconstructor = _FlatReconstructor()
    scorers = {
        "accurate": VolumeScorer(model, InversionConfig("accurate"), mean_error, torch.device("cpu")),
        "fast": VolumeScorer(model, InversionConfig("fast"), mean_error, torch.device("cpu")),
        "typical": VolumeScorer(typical_model, InversionConfig("fast"), mean_error, torch.device("cpu")),
        "flat": flat,
    }
    shape = (sz, sy, sx)
    error = {name: np.median(s.score(twin.volume.array_zyx, shape).pixel) for name, s in scorers.items()}
    assert error["accurate"] < error["flat"] and error["fast"] < error["typical"], error


class _FlatReconstructor:
    """Each slice reconstructed as its body's median intensity: the best a model that learned nothing does."""

    bf16 = False

    def autocast(self):
        return contextlib.nullcontext()

    def reconstruct(self, x, position, body, cancel=None):
        from AnomalyScoutLib.inversion import Reconstruction

        flat = torch.stack([xi[bi].median() if bi.any() else xi.median() for xi, bi in zip(x, body)])
        return Reconstruction(flat[:, None, None].expand_as(x).clone(), torch.zeros(len(x)))
