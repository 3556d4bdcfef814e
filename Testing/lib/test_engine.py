"""score_file end to end on a tiny phantom with a random-initialised tiny model: the output contract.

The trained model is not needed to check where outputs go, their grid, their atomicity and the calibration
plumbing; whether anomalies score high is tested with the shipped model in ``test_demo.py``.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from AnomalyScoutLib.calibration import Calibration, calibration_key, fit_mode_calibration
from AnomalyScoutLib.cancellation import CancelFlag
from AnomalyScoutLib.engine import OUTPUT_FILES, ScoreOptions, VolumeScorer, canonical_view, score_file
from AnomalyScoutLib.errors import CancelledError, ConfigError, UnreadableVolumeError
from AnomalyScoutLib.inversion import InversionConfig
from AnomalyScoutLib.io.geometry import axial_frame, from_canonical, slice_centers_ras, to_canonical
from AnomalyScoutLib.io.volume import Volume, write_volume
from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.scoring import ScoreConfig

torch.set_num_threads(1)
#: A rotated, axis-swapping direction: canonical slices are then not the file's z slices.
OBLIQUE = (0.0, 0.6, 0.8, 1.0, 0.0, 0.0, 0.0, 0.8, -0.6)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def started(self, *args) -> None:
        self.events.append(("started", *args))

    def progress(self, *args) -> None:
        self.events.append(("progress", *args))

    def warning(self, message: str) -> None:
        self.events.append(("warning", message))


@pytest.fixture(scope="module")
def scorer(tiny_architecture) -> VolumeScorer:
    model = AnomalyModel.create(tiny_architecture, seed=0)
    return VolumeScorer(model, InversionConfig(mode="fast"), ScoreConfig(), torch.device("cpu"), batch_size=7)


@pytest.fixture(scope="module")
def oblique_ct(tiny_phantom, tmp_path_factory) -> tuple[Volume, str]:
    volume = dataclasses.replace(tiny_phantom.volume, direction=OBLIQUE, origin_xyz=(12.5, -30.0, 7.25))
    path = tmp_path_factory.mktemp("ct") / "oblique.nrrd"
    write_volume(volume, path)
    return volume, str(path)


@pytest.fixture(scope="module")
def oblique_run(scorer, oblique_ct, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "out"
    recorder = Recorder()
    return score_file(oblique_ct[1], out, scorer, listener=recorder), out, recorder


def test_volumes_are_written_on_the_inputs_exact_grid(oblique_ct, oblique_run):
    volume, _ = oblique_ct
    _, out, _ = oblique_run
    for name in ("residual.nrrd", "reconstruction.nrrd"):
        image = sitk.ReadImage(str(out / name))
        assert image.GetSize() == tuple(reversed(volume.array_zyx.shape))
        np.testing.assert_allclose(image.GetSpacing(), volume.spacing_xyz, atol=1e-9)
        np.testing.assert_allclose(image.GetOrigin(), volume.origin_xyz, atol=1e-9)
        np.testing.assert_allclose(image.GetDirection(), OBLIQUE, atol=1e-9)
        assert image.GetPixelID() == sitk.sitkFloat32


def test_an_int16_file_scores_exactly_like_the_same_values_stored_as_float32(scorer, oblique_ct, tmp_path):
    # score_file keeps an int16 CT as int16 and converts batch by batch: nothing may change but memory.
    volume, _ = oblique_ct
    whole_hu = np.round(volume.array_zyx)
    outputs = {}
    for dtype in (np.int16, np.float32):
        path = tmp_path / f"ct-{np.dtype(dtype).name}.nrrd"
        image = sitk.GetImageFromArray(whole_hu.astype(dtype))
        image.SetSpacing(volume.spacing_xyz)
        image.SetOrigin(volume.origin_xyz)
        image.SetDirection(volume.direction)
        sitk.WriteImage(image, str(path))
        assert sitk.GetArrayFromImage(sitk.ReadImage(str(path))).dtype == dtype
        score_file(path, tmp_path / np.dtype(dtype).name, scorer)
        outputs[dtype] = tmp_path / np.dtype(dtype).name
    for name in ("residual.nrrd", "reconstruction.nrrd", "scores.csv", "flagged.png"):
        assert (outputs[np.int16] / name).read_bytes() == (outputs[np.float32] / name).read_bytes(), name


#: Two storages of one scan: every axis reversed (axial: a batch is a block of file z slices, written whole),
#: and file x running superior, y left, z posterior (sagittal: a batch is scattered, written through the map).
REVERSED_AXIAL = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0)


def _stored_as(canonical: np.ndarray, spacing_kji: tuple[float, ...], direction: tuple[float, ...]) -> Volume:
    """The volume whose canonical order, with this ``direction``, is ``canonical``."""
    probe = Volume(np.zeros((2, 3, 5), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), direction)
    axes = axial_frame(probe).axes
    shape_zyx = [0, 0, 0]
    spacing_xyz = [0.0, 0.0, 0.0]
    for canonical_axis, file_axis in enumerate(axes):
        shape_zyx[file_axis] = canonical.shape[canonical_axis]
        spacing_xyz[2 - file_axis] = spacing_kji[canonical_axis]
    empty = Volume(np.zeros(shape_zyx, np.float32), tuple(spacing_xyz), (10.0, -20.0, 30.0), direction)
    return dataclasses.replace(empty, array_zyx=from_canonical(canonical, axial_frame(empty)))


def test_axial_and_sagittal_files_of_one_scan_give_the_same_canonical_outputs(scorer, tiny_phantom, tmp_path):
    frame = axial_frame(tiny_phantom.volume)
    canonical = to_canonical(tiny_phantom.volume.array_zyx, frame)
    results = []
    for name, direction in (("axial", REVERSED_AXIAL), ("sagittal", SAGITTAL)):
        volume = _stored_as(canonical, frame.spacing_kji, direction)
        stored_frame = axial_frame(volume)
        assert (stored_frame.file_slab(0, canonical[:1]) is None) == (name == "sagittal")
        write_volume(volume, tmp_path / f"{name}.nrrd")
        score_file(tmp_path / f"{name}.nrrd", tmp_path / name, scorer)  # batches of 7: the last one is short
        results.append(
            [
                to_canonical(
                    sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / name / file))), stored_frame
                )
                for file in ("residual.nrrd", "reconstruction.nrrd")
            ]
        )
    (axial_residual, axial_reconstruction), (sagittal_residual, sagittal_reconstruction) = results
    assert axial_residual.max() > 0
    np.testing.assert_array_equal(axial_residual, sagittal_residual)
    np.testing.assert_array_equal(axial_reconstruction, sagittal_reconstruction)
    air = (to_canonical(tiny_phantom.labels, frame) == 0) & (canonical < -900)  # around the patient
    np.testing.assert_array_equal(axial_reconstruction[air], canonical[air])


def test_an_error_while_writing_stops_the_run_and_nothing_is_written_after_it(scorer, tiny_phantom):
    class FullDisk:
        def __init__(self) -> None:
            self.batches: list[int] = []

        def write(self, k0, residual, reconstruction_hu, anomaly_map) -> None:
            self.batches.append(k0)
            if len(self.batches) == 2:
                raise OSError(28, "No space left on device")

    frame = axial_frame(tiny_phantom.volume)
    sink = FullDisk()
    with pytest.raises(OSError, match="No space left"):
        scorer.score(to_canonical(tiny_phantom.volume.array_zyx, frame), frame.spacing_kji, sink=sink)
    assert sink.batches == [0, 7]  # the third batch was scored but never handed over


def test_residual_is_zero_outside_the_body_and_the_reconstruction_keeps_the_input_there(
    tiny_phantom, oblique_ct, oblique_run
):
    volume, _ = oblique_ct
    _, out, _ = oblique_run
    residual = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "residual.nrrd")))
    reconstruction = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "reconstruction.nrrd")))
    air = (tiny_phantom.labels == 0) & (volume.array_zyx < -900)  # around the patient, not lungs or bowel gas
    assert residual[air].max() == 0 and residual.max() > 0
    np.testing.assert_array_equal(reconstruction[air], volume.array_zyx[air])
    body = volume.array_zyx > 0
    assert np.abs(reconstruction[body] - volume.array_zyx[body]).mean() > 0  # the body is re-generated


def test_score_tables_have_one_row_per_canonical_slice_with_its_centre(oblique_ct, oblique_run):
    volume, _ = oblique_ct
    run, out, recorder = oblique_run
    frame = axial_frame(volume)
    data = json.loads((out / "scores.json").read_text())
    assert set(OUTPUT_FILES) == set(run.outputs) == {p.name for p in out.iterdir()}
    assert len(data["slices"]) == frame.n_slices
    assert {
        "case_score",
        "case_percentile",
        "case_flagged",
        "model_id",
        "mode",
        "fpr",
        "device",
        "timings",
    } <= set(data)
    centres = np.array([s["center_ras"] for s in data["slices"]])
    np.testing.assert_allclose(centres, slice_centers_ras(volume, frame), atol=1e-6)
    rows = (out / "scores.csv").read_text().splitlines()
    assert rows[0] == "slice_index,position,score,percentile,flagged,in_range"
    assert len(rows) == frame.n_slices + 1
    assert [float(r.split(",")[2]) for r in rows[1:]] == pytest.approx(
        [s["score"] for s in data["slices"]], rel=1e-5
    )
    kinds = [e[0] for e in recorder.events]
    assert kinds[0] == "started" and kinds.count("progress") == frame.n_slices


def test_an_uncalibrated_model_warns_and_falls_back_to_the_case_itself(oblique_run):
    run, out, recorder = oblique_run
    assert not run.calibrated_by_model
    assert any(e[0] == "warning" and "calibrat" in e[1] for e in recorder.events)
    assert json.loads((out / "scores.json").read_text())["case_percentile"] is None


def test_a_cancelled_run_leaves_the_output_folder_as_it_was(scorer, oblique_ct, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "scores.csv").write_text("previous run")
    flag = CancelFlag()
    flag.set()
    with pytest.raises(CancelledError):
        score_file(oblique_ct[1], out, scorer, cancel=flag)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in out.iterdir()] == ["scores.csv"] and (
        out / "scores.csv"
    ).read_text() == "previous run"


def test_an_unreadable_input_writes_nothing(scorer, tmp_path):
    (tmp_path / "notes.nrrd").write_text("not an image")
    with pytest.raises(UnreadableVolumeError):
        score_file(tmp_path / "notes.nrrd", tmp_path / "out", scorer)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.nrrd"]


def test_an_organ_mask_restricts_the_residual(scorer, tiny_phantom, tmp_path):
    write_volume(tiny_phantom.volume, tmp_path / "ct.nrrd")
    labels = dataclasses.replace(tiny_phantom.volume, array_zyx=tiny_phantom.labels.astype(np.float32))
    write_volume(labels, tmp_path / "labels.nrrd")
    options = ScoreOptions(mask_path=str(tmp_path / "labels.nrrd"), mask_label=2)  # liver
    score_file(tmp_path / "ct.nrrd", tmp_path / "out", scorer, options)
    residual = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "residual.nrrd")))
    assert residual[tiny_phantom.labels != 2].max() == 0 and residual[tiny_phantom.labels == 2].max() > 0


def _calibrated_scorer(tiny_architecture, fitted) -> VolumeScorer:
    model = AnomalyModel.create(tiny_architecture, seed=0)
    model.calibration = Calibration({calibration_key("fast", "topk"): fitted}).to_json()
    return VolumeScorer(model, InversionConfig(mode="fast"), ScoreConfig(), torch.device("cpu"))


def test_a_stored_calibration_gives_percentiles_and_flags(scorer, tiny_architecture, tiny_phantom, tmp_path):
    write_volume(tiny_phantom.volume, tmp_path / "ct.nrrd")
    frame = axial_frame(tiny_phantom.volume)
    normal = scorer.score(to_canonical(tiny_phantom.volume.array_zyx, frame), frame.spacing_kji)
    # The case is its own "normal" population: at a 20 % false-positive rate about a fifth of its slices,
    # its highest-scoring ones, lie above the threshold and the rest below.
    fitted = fit_mode_calibration(
        [normal.scores], [normal.positions], [0.1], scorer.calibration_settings(), n_bins=1
    )
    calibrated = _calibrated_scorer(tiny_architecture, fitted)
    run = score_file(tmp_path / "ct.nrrd", tmp_path / "out", calibrated, ScoreOptions(fpr=0.2))
    data = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert run.calibrated_by_model and data["calibrated"] and data["fpr"] == 0.2
    scores = np.array([s["score"] for s in data["slices"]])  # batches of 16, not 7: close to normal.scores
    expected = fitted.apply(scores, normal.positions, run.case_score, 0.2)
    flagged = [s["flagged"] for s in data["slices"]]
    assert flagged == expected.flagged.tolist() and 0 < sum(flagged) < len(flagged)
    np.testing.assert_allclose([s["percentile"] for s in data["slices"]], expected.percentile, atol=1e-3)
    assert scores[expected.flagged].min() > np.quantile(normal.scores, 0.6)  # only high scores are flagged
    assert data["case_flagged"] and data["case_percentile"] == 100.0  # the case score is far above 0.1


def test_a_calibration_made_with_other_settings_is_not_used(scorer, tiny_architecture, oblique_ct, tmp_path):
    frame = axial_frame(oblique_ct[0])
    normal = scorer.score(to_canonical(oblique_ct[0].array_zyx, frame), frame.spacing_kji)
    other_steps = {**scorer.calibration_settings(), "steps": 20}  # an accurate-mode count, not fast's 0
    fitted = fit_mode_calibration([normal.scores], [normal.positions], [0.1], other_steps)
    recorder = Recorder()
    run = score_file(
        oblique_ct[1], tmp_path / "out", _calibrated_scorer(tiny_architecture, fitted), listener=recorder
    )
    assert not run.calibrated_by_model
    assert any(e[0] == "warning" and "'steps': 20" in e[1] for e in recorder.events)


def test_canonical_view_is_a_writable_view_matching_to_canonical(oblique_ct):
    volume, _ = oblique_ct
    frame = axial_frame(volume)
    target = np.zeros(volume.array_zyx.shape, dtype=np.float32)
    view = canonical_view(target, frame)
    np.testing.assert_array_equal(view, to_canonical(target, frame))
    view[:] = to_canonical(volume.array_zyx, frame)
    np.testing.assert_array_equal(target, volume.array_zyx)


def test_running_out_of_gpu_memory_halves_the_batch_with_the_same_scores(
    tiny_architecture, tiny_phantom, monkeypatch
):
    model = AnomalyModel.create(tiny_architecture, seed=0)
    scorer = VolumeScorer(
        model, InversionConfig(mode="fast"), ScoreConfig(), torch.device("cpu"), batch_size=8
    )
    frame = axial_frame(tiny_phantom.volume)
    canonical = to_canonical(tiny_phantom.volume.array_zyx, frame)
    expected = scorer.score(canonical, frame.spacing_kji)
    real = scorer.reconstructor.reconstruct

    def small_gpu(x, *args, **kwargs):
        if len(x) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(x, *args, **kwargs)

    monkeypatch.setattr(scorer.reconstructor, "reconstruct", small_gpu)
    recorder = Recorder()
    result = scorer.score(canonical, frame.spacing_kji, listener=recorder)
    np.testing.assert_allclose(result.scores, expected.scores, rtol=1e-4)
    assert scorer.batch_size == 2
    assert any(e[0] == "warning" and "out of memory" in e[1] for e in recorder.events)


def test_out_of_memory_on_a_single_slice_is_a_clear_error(tiny_architecture, tiny_phantom, monkeypatch):
    model = AnomalyModel.create(tiny_architecture, seed=0)
    scorer = VolumeScorer(
        model, InversionConfig(mode="fast"), ScoreConfig(), torch.device("cpu"), batch_size=1
    )

    def no_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(scorer.reconstructor, "reconstruct", no_memory)
    frame = axial_frame(tiny_phantom.volume)
    with pytest.raises(ConfigError, match="out of memory on a single slice"):
        scorer.score(to_canonical(tiny_phantom.volume.array_zyx, frame), frame.spacing_kji)
