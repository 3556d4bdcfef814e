"""The intensity envelope: metal, which the networks' HU window hides, flags its slice and lights the heatmap.

Unit rules on small arrays, then ``score_file`` and ``calibrate`` end to end on the tiny phantoms: the
anomalous twin carries a 3000 HU clip in canonical slice 10 (``Testing/conftest.py``), every other voxel
equals the normal phantom, whose body stays below 800 HU.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from AnomalyScoutLib.cli import main
from AnomalyScoutLib.commands import calibrate
from AnomalyScoutLib.engine import RESIDUAL_TOP, ScoreOptions, VolumeScorer, score_file
from AnomalyScoutLib.errors import ModelFileError
from AnomalyScoutLib.intensity_envelope import (
    FLOOR_HU,
    MARGIN_HU,
    METADATA_KEY,
    IntensityEnvelope,
    highest_body_hu,
)
from AnomalyScoutLib.inversion import InversionConfig
from AnomalyScoutLib.io.volume import write_volume
from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.phantom import ANOMALY_CODES
from AnomalyScoutLib.scoring import ScoreConfig

torch.set_num_threads(1)
CLIP_SLICE = 10


def test_the_envelope_is_the_highest_normal_voxel_plus_a_margin_never_below_the_floor():
    assert IntensityEnvelope.fit([900.0, 1200.0], floor_hu=0.0).high_hu == 1200.0 + MARGIN_HU
    fitted = IntensityEnvelope.fit([900.0, 1200.0])
    assert fitted.high_hu == FLOOR_HU and fitted.normal_max_hu == 1200.0 and fitted.volumes == 2
    assert IntensityEnvelope.fit([2500.0, -np.inf]).high_hu == 2500.0 + MARGIN_HU  # an empty body is skipped
    with pytest.raises(ValueError, match="at least one normal volume"):
        IntensityEnvelope.fit([-np.inf])


def test_only_body_voxels_above_the_envelope_count_and_a_slice_needs_enough_of_them():
    envelope = IntensityEnvelope(high_hu=2000.0, min_area_mm2=2.0)
    hu = np.zeros((3, 4, 4), dtype=np.float32)
    body = np.ones_like(hu, dtype=bool)
    hu[0, 0, 0] = 3000.0  # one voxel: 1 mm² at 1 mm pixels, too little
    hu[1, :2, :2] = 3000.0  # four voxels
    hu[2, :2, :2] = 3000.0
    body[2, :2, :2] = False  # ... but outside the body (the table, a marker on the skin line)
    area = envelope.area_mm2(envelope.beyond(hu, body), pixel_area_mm2=1.0)
    assert area.tolist() == [1.0, 4.0, 0.0]
    assert envelope.flags(area).tolist() == [False, True, False]
    assert envelope.flags(envelope.area_mm2(envelope.beyond(hu, body), 0.5)).tolist() == [False, True, False]
    assert highest_body_hu(np.full((2, 8, 8), -1000.0)) == -np.inf  # air only: no body


def test_the_envelope_round_trips_through_metadata_and_a_malformed_one_is_a_model_file_error():
    envelope = IntensityEnvelope.fit([1234.0], floor_hu=1000.0)
    assert IntensityEnvelope.from_metadata({METADATA_KEY: envelope.to_json()}) == envelope
    assert IntensityEnvelope.from_metadata({}) is None  # calibrated before the envelope existed
    for bad in ({"min_area_mm2": 2.0}, {"high_hu": "hot", "min_area_mm2": 2.0}, [1, 2], {"high_hu": 1.0,
                "min_area_mm2": 0.0}):  # fmt: skip
        with pytest.raises(ModelFileError, match="intensity_envelope"):
            IntensityEnvelope.from_metadata({METADATA_KEY: bad})


def _score(tiny_architecture, case, tmp_path, envelope: IntensityEnvelope | None) -> tuple[dict, np.ndarray]:
    model = AnomalyModel.create(tiny_architecture, seed=0)
    if envelope is not None:
        model.metadata[METADATA_KEY] = envelope.to_json()
    scorer = VolumeScorer(model, InversionConfig(mode="fast"), ScoreConfig(), torch.device("cpu"))
    path, out = tmp_path / "ct.nrrd", tmp_path / ("with" if envelope else "without")
    write_volume(case.volume, path)
    score_file(path, out, scorer, ScoreOptions(position="index"))
    residual = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "residual.nrrd")))
    return json.loads((out / "scores.json").read_text()), residual


def test_a_metal_clip_flags_its_slice_at_percentile_100_and_tops_the_heatmap(
    tiny_architecture, tiny_anomalous_phantom, tmp_path
):
    metal = tiny_anomalous_phantom.anomaly_mask == ANOMALY_CODES["metal"]
    assert np.flatnonzero(metal.any(axis=(1, 2))).tolist() == [CLIP_SLICE]
    data, residual = _score(tiny_architecture, tiny_anomalous_phantom, tmp_path, IntensityEnvelope(FLOOR_HU))
    beyond = [s["beyond_normal_mm2"] for s in data["slices"]]
    assert beyond[CLIP_SLICE] > 0 and sum(beyond) == beyond[CLIP_SLICE]
    clip = data["slices"][CLIP_SLICE]
    assert clip["flagged"] and clip["percentile"] == 100.0 and data["case_flagged"]
    assert data["intensity_envelope_hu"] == FLOOR_HU
    hot = tiny_anomalous_phantom.volume.array_zyx > FLOOR_HU
    assert hot.any() and np.all(residual[hot] == RESIDUAL_TOP)

    # The same model without an envelope: the residual alone does not single the clip out.
    plain, plain_residual = _score(tiny_architecture, tiny_anomalous_phantom, tmp_path, None)
    assert plain["slices"][CLIP_SLICE]["beyond_normal_mm2"] is None and plain["intensity_envelope_hu"] is None
    assert plain_residual[hot].max() < RESIDUAL_TOP
    np.testing.assert_array_equal(plain_residual[~hot], residual[~hot])  # only the metal's voxels changed
    assert plain["slices"][CLIP_SLICE]["percentile"] < 100.0


def test_a_normal_scan_has_nothing_beyond_its_envelope(tiny_architecture, tiny_phantom, tmp_path):
    data, _ = _score(tiny_architecture, tiny_phantom, tmp_path, IntensityEnvelope(FLOOR_HU))
    assert all(s["beyond_normal_mm2"] == 0.0 for s in data["slices"])


def test_calibration_fits_the_envelope_on_its_normals_and_stores_it(tiny_model_file, tiny_phantom, tmp_path):
    model = AnomalyModel.load(tiny_model_file)
    scorer = VolumeScorer(model, InversionConfig(mode="fast"), ScoreConfig(), torch.device("cpu"))
    done = calibrate.calibrate_model(model, [tiny_phantom.volume], [scorer], n_bins=2, envelope_floor_hu=0.0)
    highest = float(tiny_phantom.volume.array_zyx[tiny_phantom.labels > 0].max())
    assert done.envelope.normal_max_hu == pytest.approx(highest)
    assert done.envelope.high_hu == pytest.approx(highest + MARGIN_HU) and done.envelope.volumes == 1
    assert "intensity envelope" in done.summary()

    out = tmp_path / "calibrated.safetensors"
    argv = ["calibrate", "--model", str(tiny_model_file), "--out", str(out), "--phantom", "1",
            "--phantom-shape", "48,48,20", "--modes", "fast", "--bins", "2", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    stored = IntensityEnvelope.from_metadata(AnomalyModel.load(out).metadata)
    assert stored is not None and stored.high_hu == FLOOR_HU and stored.volumes == 1


def test_metal_outside_the_models_range_is_not_flagged_and_without_metal_nothing_changes():
    from AnomalyScoutLib.calibration import self_calibrated
    from AnomalyScoutLib.engine import CaseScores, _envelope_flags
    from AnomalyScoutLib.position.gate import GateResult

    scores = np.array([1.0, 1.1, 0.9, 1.0])
    calibrated = self_calibrated(scores, 1.0, 0.01)
    case = CaseScores(np.linspace(0, 1, 4), scores, scores, 0 * scores, np.array([0.0, 9.0, 0.0, 9.0]))
    gate = GateResult(np.array([True, True, True, False]), np.array(["", "", "", "above"]), "1 above")
    envelope = IntensityEnvelope(FLOOR_HU)
    gated = _envelope_flags(calibrated, case, envelope, gate)
    assert gated.flagged.tolist() == [False, True, False, False] and gated.case_flagged
    assert gated.percentile[1] == 100.0 and gated.percentile[3] == calibrated.percentile[3]
    no_metal = CaseScores(case.positions, scores, scores, 0 * scores, np.zeros(4))
    assert _envelope_flags(calibrated, no_metal, envelope, gate) is calibrated
    assert _envelope_flags(calibrated, case, None, gate) is calibrated
