"""Scoring with a head: anomaly_map.nrrd beside residual.nrrd, and the head's top-k as the slice score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from AnomalyScoutLib.anomaly_map.head import AnomalyHead, HeadConfig
from AnomalyScoutLib.anomaly_map.training import attach_head
from AnomalyScoutLib.engine import ANOMALY_MAP_FILE, OUTPUT_FILES, VolumeScorer, score_file
from AnomalyScoutLib.inversion import InversionConfig
from AnomalyScoutLib.io.volume import write_volume
from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.scoring import ScoreConfig

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ct_path(tiny_anomalous_phantom, tmp_path_factory):
    path = tmp_path_factory.mktemp("ct") / "ct.nrrd"
    write_volume(tiny_anomalous_phantom.volume, path)
    return str(path)


def _scorer(tiny_architecture, head: bool) -> VolumeScorer:
    model = AnomalyModel.create(tiny_architecture, seed=0)
    if head:
        torch.manual_seed(0)
        attach_head(model, AnomalyHead(HeadConfig(channels=(4, 8), top_fraction=0.05)), {})
    return VolumeScorer(model, InversionConfig(mode="fast"), ScoreConfig(), torch.device("cpu"), batch_size=5)


@pytest.fixture(scope="module")
def head_run(tiny_architecture, ct_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "out"
    return score_file(ct_path, out, _scorer(tiny_architecture, True)), out


def test_the_map_is_written_beside_the_residual_on_the_inputs_grid_and_is_0_outside_the_body(
    tiny_anomalous_phantom, head_run
):
    run, out = head_run
    assert set(run.outputs) == {*OUTPUT_FILES, ANOMALY_MAP_FILE} == {p.name for p in out.iterdir()}
    image = sitk.ReadImage(str(out / ANOMALY_MAP_FILE))
    residual = sitk.ReadImage(str(out / "residual.nrrd"))
    assert image.GetSize() == residual.GetSize() and image.GetSpacing() == residual.GetSpacing()
    maps = sitk.GetArrayFromImage(image)
    air = (tiny_anomalous_phantom.labels == 0) & (tiny_anomalous_phantom.volume.array_zyx < -900)
    assert maps[air].max() == 0 and 0 < maps.max() <= 1


def test_the_slice_score_is_the_heads_top_k_not_the_residuals(tiny_architecture, ct_path, head_run, tmp_path):
    run, out = head_run
    plain = score_file(ct_path, tmp_path / "plain", _scorer(tiny_architecture, False))
    assert ANOMALY_MAP_FILE not in plain.outputs
    np.testing.assert_allclose(
        run.case.pixel, plain.case.pixel, rtol=1e-5
    )  # the residual's part is unchanged
    assert not np.allclose(run.case.scores, plain.case.scores)
    assert (run.case.scores > 0).all() and (run.case.scores <= 1).all()
    slices = json.loads((out / "scores.json").read_text())["slices"]
    np.testing.assert_allclose([s["score"] for s in slices], run.case.scores, rtol=1e-4)


def test_a_head_model_leaves_out_the_feature_residual_nobody_reads(
    tiny_architecture, ct_path, head_run, tmp_path
):
    run, out = head_run
    plain = score_file(ct_path, tmp_path / "plain", _scorer(tiny_architecture, False))
    assert np.isnan(run.case.feature).all() and np.isfinite(plain.case.feature).all()
    slices = json.loads((out / "scores.json").read_text())["slices"]
    assert all(s["feature_score"] is None for s in slices)  # valid JSON: no NaN


@pytest.mark.parametrize("head", [True, False])
def test_the_montages_show_the_map_the_scores_came_from(
    tiny_architecture, tiny_anomalous_phantom, ct_path, tmp_path, monkeypatch, head
):
    """flagged.png and review.png draw the head's map when there is one (with its own colour-bar label),
    else the residual: a picture must show what ranked its slices."""
    from AnomalyScoutLib import engine
    from AnomalyScoutLib.io.geometry import axial_frame, to_canonical
    from AnomalyScoutLib.io.volume import Volume, read_volume
    from AnomalyScoutLib.montage import ANOMALY_MAP_LABEL, RESIDUAL_LABEL
    from AnomalyScoutLib.segmentation import review

    drawn: dict[str, tuple] = {}

    def capture(path, panels, spacing, title="", heatmap_label=RESIDUAL_LABEL):
        drawn[Path(path).name] = (panels, heatmap_label)

    monkeypatch.setattr(engine, "write_montage", capture)
    monkeypatch.setattr(review, "write_montage", capture)
    phantom = tiny_anomalous_phantom.volume
    segmentation = tmp_path / "seg.nrrd"
    labels = (tiny_anomalous_phantom.labels > 0).astype(np.uint8)
    write_volume(Volume(labels, phantom.spacing_xyz, phantom.origin_xyz, phantom.direction), segmentation)
    out = tmp_path / "review"
    review.review_segmentation(ct_path, segmentation, out, _scorer(tiny_architecture, head))

    shown_file = ANOMALY_MAP_FILE if head else "residual.nrrd"
    frame = axial_frame(phantom)
    expected = to_canonical(read_volume(out / shown_file, validate=False).array_zyx, frame)
    for name in ("flagged.png", "review.png"):
        panels, label = drawn[name]
        assert label == (ANOMALY_MAP_LABEL if head else RESIDUAL_LABEL)
        for panel in panels:
            np.testing.assert_allclose(panel.heatmap, expected[panel.slice_index], atol=1e-3)
