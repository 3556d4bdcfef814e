"""Reviewing a segmentation from the module: export onto the CT's grid, bad input, the worker's review job,
the risk list and the jump to a slice.

Scene logic runs on slicer-core's real MRML scene; the panel is driven through the strict stand-in
(``widget_harness.py``) with a fake worker; the last tests run the real worker's review job on a tiny model.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import vtk
from AnomalyScoutModuleLib.review import ReviewRow, check_review_inputs, read_review, review_summary
from AnomalyScoutModuleLib.scene import HEAT_COLOR_TABLE, ROLE_ATTRIBUTE, SceneResults, export_segment_mask
from AnomalyScoutModuleLib.worker_run import RunCallbacks, RunRequest, WorkerRun, blocking_launcher
from module_helpers import (
    ORGAN_BOX,
    SHAPE_ZYX,
    SPACING_XYZ,
    load_volume_node,
    organ_labels,
    segmentation_from_labels,
    synthetic_ct,
    write_contract_outputs,
    write_labels,
    write_volume_file,
)
from widget_harness import FakeProcess

from AnomalyScoutLib.errors import ModelFileError, ResultsError, VolumeError

slicer = pytest.importorskip("slicer")


@pytest.fixture
def segmentation(scene, tmp_path):
    return segmentation_from_labels(scene, write_labels(organ_labels(), tmp_path / "organ.nrrd"))


@pytest.fixture
def coarse_segmentation(scene, tmp_path):
    """The organ from a label map on another grid: half the rows and columns at twice the spacing."""
    coarse = organ_labels()[:, ::2, ::2]
    spacing = (SPACING_XYZ[0] * 2, SPACING_XYZ[1] * 2, SPACING_XYZ[2])
    return segmentation_from_labels(scene, write_labels(coarse, tmp_path / "coarse.nrrd", spacing))


def _review_heatmap() -> np.ndarray:
    """The review's residual: heat in the organ only (unlike a score run's, so the two are told apart)."""
    residual = np.zeros(SHAPE_ZYX, np.float32)
    residual[ORGAN_BOX] = np.linspace(0.1, 0.9, ORGAN_BOX[2].stop - ORGAN_BOX[2].start, dtype=np.float32)
    return residual


def _write_review(out_dir: Path, risks: dict[int, float]) -> dict:
    """What the worker's review job leaves: the score outputs (its heatmap :func:`_review_heatmap`) and
    ``review.csv`` (blank risk outside); returns the ``scores.json`` content."""
    report = write_contract_outputs(out_dir)
    write_volume_file(_review_heatmap(), out_dir / "residual.nrrd")
    with open(out_dir / "review.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slice_index", "position", "risk", "flagged"])
        for k in range(SHAPE_ZYX[0]):
            risk = risks.get(k)
            flagged = int(risk is not None and risk > 1)
            writer.writerow([k, f"{(k + 0.5) / SHAPE_ZYX[0]:.6f}", "" if risk is None else risk, flagged])
    return report


# --- export onto the CT's grid ---


def test_a_segmentation_on_another_grid_is_exported_onto_the_cts_grid(
    scene, ct_node, coarse_segmentation, tmp_path
):
    node, segment = coarse_segmentation
    path = export_segment_mask(node, segment, ct_node, tmp_path / "segment.nrrd")

    image = sitk.ReadImage(str(path))
    assert image.GetSize() == ct_node.GetImageData().GetDimensions()
    assert image.GetSpacing() == pytest.approx(SPACING_XYZ)
    mask = sitk.GetArrayFromImage(image) > 0
    # CT voxels (k, 2i, 2j) sit exactly on the coarse voxels' centres; between them the export may round
    np.testing.assert_array_equal(mask[:, ::2, ::2], organ_labels()[:, ::2, ::2] > 0)
    rows = np.flatnonzero(mask.any(axis=(0, 2)))
    assert ORGAN_BOX[1].start - 1 <= rows.min() and rows.max() <= ORGAN_BOX[1].stop


def test_an_empty_segment_or_one_outside_the_ct_is_refused_with_one_line(
    scene, ct_node, segmentation, tmp_path
):
    node, _ = segmentation
    empty = node.GetSegmentation().AddEmptySegment("", "nothing drawn")
    with pytest.raises(VolumeError, match="'nothing drawn' of 'liver model' is empty on the grid of 'case1'"):
        export_segment_mask(node, empty, ct_node, tmp_path / "a.nrrd")
    far = segmentation_from_labels(
        scene, write_labels(organ_labels(), tmp_path / "far.nrrd", origin_xyz=(500.0, 500.0, 900.0))
    )
    with pytest.raises(VolumeError, match="empty on the grid"):
        export_segment_mask(*far, ct_node, tmp_path / "b.nrrd")
    assert not (tmp_path / "a.nrrd").exists() and not (tmp_path / "b.nrrd").exists()


# --- the review's heatmap in the slice views ---


def _hide(segmentation_node, segment_id: str) -> None:
    """As a user may leave it: the node hidden, drawn filled, the segment itself hidden."""
    segmentation_node.CreateDefaultDisplayNodes()
    display = segmentation_node.GetDisplayNode()
    display.SetVisibility(False)
    display.SetVisibility2DOutline(False)
    display.SetVisibility2DFill(True)
    display.SetSegmentVisibility(segment_id, False)


def _assert_outlined(segmentation_node, segment_id: str) -> None:
    display = segmentation_node.GetDisplayNode()
    assert display.GetVisibility() and display.GetVisibility2D()
    assert display.GetVisibility2DOutline() and not display.GetVisibility2DFill()
    assert display.GetSegmentVisibility(segment_id)


def test_a_review_shows_its_heatmap_over_the_ct_beside_a_runs_and_outlines_the_segment(
    scene, ct_node, segmentation, run_dir, red_slice_logic, tmp_path
):
    node, segment = segmentation
    results = SceneResults(scene)
    run = results.show_results(ct_node, run_dir[0])
    run_heat = slicer.util.arrayFromVolume(run.residual).copy()
    _write_review(tmp_path / "review", {6: 0.8, 7: 1.4})
    _hide(node, segment)

    heatmap = results.show_review(ct_node, tmp_path / "review", node, segment, opacity=0.4).default

    composite = red_slice_logic.GetSliceCompositeNode()
    assert composite.GetBackgroundVolumeID() == ct_node.GetID()
    assert composite.GetForegroundVolumeID() == heatmap.GetID() != run.residual.GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.4)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(heatmap), _review_heatmap())
    display = heatmap.GetDisplayNode()
    assert display.GetColorNode().GetName() == HEAT_COLOR_TABLE and display.GetApplyThreshold()
    assert 0.1 < display.GetLowerThreshold() < 0.9  # thresholded as a run's heatmap: only the hot part shows
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(run.residual), run_heat)  # the run's is kept
    _assert_outlined(node, segment)

    count = scene.GetNumberOfNodes()
    again = results.show_review(ct_node, tmp_path / "review", node, segment).default
    assert again.GetID() == heatmap.GetID() and scene.GetNumberOfNodes() == count
    assert heatmap.GetAttribute(ROLE_ATTRIBUTE) == "review_residual"


def test_a_review_without_its_heatmap_is_a_results_error_naming_the_file(scene, ct_node, tmp_path):
    _write_review(tmp_path / "review", {6: 0.8})
    (tmp_path / "review" / "residual.nrrd").unlink()
    with pytest.raises(ResultsError, match="residual.nrrd is missing"):
        SceneResults(scene).show_review(ct_node, tmp_path / "review")


# --- bad input before anything starts ---


@pytest.mark.parametrize(
    ("missing", "error", "line"),
    [
        ("ct", VolumeError, "Choose the CT volume"),
        ("segmentation", VolumeError, "Choose the segmentation"),
        ("segment", VolumeError, "has no segment chosen"),
        ("model", ModelFileError, "add a model file"),
    ],
)
def test_each_missing_input_is_named_in_one_line(ct_node, segmentation, missing, error, line):
    node, segment = segmentation
    inputs = {"ct": ct_node, "segmentation": node, "segment": segment, "model": Path("m.safetensors")}
    inputs[missing] = "" if missing == "segment" else None
    with pytest.raises(error, match=line) as raised:
        check_review_inputs(inputs["ct"], inputs["segmentation"], inputs["segment"], inputs["model"])
    assert "\n" not in str(raised.value)
    check_review_inputs(ct_node, node, segment, Path("m.safetensors"))  # all there: no complaint


# --- the list the worker leaves ---


def test_the_review_lists_the_scored_slices_riskiest_first_with_their_centres(tmp_path):
    out = tmp_path / "review"
    report = _write_review(out, {3: 0.4, 9: 1.7, 4: 2.5, 10: 0.4, 11: 0.9})

    rows = read_review(out)

    assert [r.slice_index for r in rows] == [4, 9, 11, 3, 10]  # by risk; equal risks in slice order
    assert [r.flagged for r in rows] == [True, True, False, False, False]
    assert rows[0].center_ras == pytest.approx(report["slices"][4]["center_ras"])
    assert rows[1].cells() == ("9", f"{report['slices'][9]['position']:.3f}", "1.7", "yes")


def test_the_summary_counts_the_slices_at_risk_and_names_the_riskiest():
    rows = [ReviewRow(k, 0.5, risk, risk > 1, (0.0, 0.0, 0.0)) for k, risk in ((7, 2.25), (2, 1.5), (5, 0.5))]
    assert review_summary(rows) == (
        "Review done: 2 of 3 slices in and around the segment at risk; riskiest: slice 7 (risk 2.25)."
    )
    calm = review_summary(rows[2:])
    assert calm.startswith("Review done: none of the 1 slices") and "highest risk 0.5" in calm


@pytest.mark.parametrize(
    ("broken", "match"), [("missing", "no review at"), ("column", "is not a review: it has no column risk")]
)
def test_a_review_folder_without_its_list_is_a_results_error(tmp_path, broken, match):
    write_contract_outputs(tmp_path)
    if broken == "column":
        (tmp_path / "review.csv").write_text("slice_index,position,flagged\n0,0.1,0\n")
    with pytest.raises(ResultsError, match=match):
        read_review(tmp_path)


# --- the panel ---


def _choose(widget, ct_node, segmentation) -> None:
    widget._parameterNode.inputVolume = ct_node
    widget._parameterNode.device = "cpu"
    if segmentation is not None:
        widget.ui.reviewSegmentSelector.setCurrentNode(segmentation[0])
        widget.ui.reviewSegmentSelector.setCurrentSegmentID(segmentation[1])


def test_a_review_exports_onto_the_ct_grid_lists_the_risky_slices_and_a_click_jumps(
    widget, ct_node, coarse_segmentation, red_slice_logic
):
    _choose(widget, ct_node, coarse_segmentation)
    widget.onReview()
    launcher, request = widget.launcher, widget._review.request
    review_path = Path(launcher.args[launcher.args.index("--review") + 1])
    assert sitk.ReadImage(str(review_path)).GetSize() == ct_node.GetImageData().GetDimensions()
    assert "--mask" not in launcher.args and widget.ui.reviewButton.text == "Cancel review"
    launcher.send(event="started", slices=24, device="cpu", mode="fast", model_id="m")
    launcher.send(event="progress", i=3, n=24, slice_index=2, score=0.2, eta_s=12.0)
    assert widget.ui.reviewStatusLabel.text == "Reviewing: slice 3/24, 12 s left"
    _write_review(request.out_dir, {6: 0.8, 7: 1.4, 8: 3.0})
    launcher.send(event="done", outputs={}, case_score=0.9, flagged_slices=[8, 7])
    launcher.on_exit(0)

    table = widget.ui.reviewTable
    assert [table.item(r, 0).text for r in range(table.rowCount())] == ["8", "7", "6"]
    assert [table.item(r, 3).text for r in range(table.rowCount())] == ["yes", "yes", ""]
    assert widget.ui.reviewStatusLabel.text.startswith("Review done: 2 of 3 slices")
    assert widget.ui.reviewButton.text == "Review segmentation"
    assert not request.input_path.exists() and not review_path.exists(), "the exported inputs were left"
    widget.onReviewRowClicked(1, 0)
    assert red_slice_logic.GetSliceOffset() == pytest.approx(widget._reviewRows[1].center_ras[2])
    widget.cleanup()
    assert not request.out_dir.parent.exists(), "the review's folder outlived the module"


def test_a_finished_review_shows_its_heatmap_and_the_reviewed_segment_and_the_slider_moves_it(
    widget, ct_node, segmentation, red_slice_logic
):
    node, segment = segmentation
    _hide(node, segment)
    _choose(widget, ct_node, segmentation)
    widget.onReview()
    widget.ui.reviewSegmentSelector.setCurrentNode(None)  # the selector moves on while the worker runs
    _write_review(widget._review.request.out_dir, {6: 0.8, 7: 1.4, 8: 3.0})
    widget.launcher.send(event="done", outputs={}, case_score=0.9, flagged_slices=[8, 7])
    widget.launcher.on_exit(0)

    composite = red_slice_logic.GetSliceCompositeNode()
    heatmap = slicer.mrmlScene.GetNodeByID(composite.GetForegroundVolumeID())
    assert composite.GetBackgroundVolumeID() == ct_node.GetID()
    assert heatmap.GetAttribute(ROLE_ATTRIBUTE) == "review_residual"
    assert composite.GetForegroundOpacity() == pytest.approx(widget._parameterNode.opacity)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(heatmap), _review_heatmap())
    _assert_outlined(node, segment)
    assert widget.ui.thresholdSlider.maximum == pytest.approx(0.9)
    widget.onThreshold(0.25)
    assert heatmap.GetDisplayNode().GetLowerThreshold() == pytest.approx(0.25)


def test_a_review_whose_heatmap_is_missing_fails_in_one_line_and_leaves_nothing(
    widget, ct_node, segmentation
):
    _choose(widget, ct_node, segmentation)
    widget.onReview()
    out = widget._review.request.out_dir
    _write_review(out, {6: 0.8})
    (out / "residual.nrrd").unlink()
    widget.launcher.send(event="done", outputs={}, case_score=0.9, flagged_slices=[])
    widget.launcher.on_exit(0)
    assert widget.ui.reviewStatusLabel.text.startswith("Failed: the worker's output ")
    assert "residual.nrrd is missing" in widget.ui.reviewStatusLabel.text
    assert widget.ui.reviewTable.rowCount() == 0 and not out.parent.exists()


# --- one worker at a time ---


def _cases_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "cases"
    folder.mkdir()
    write_volume_file(synthetic_ct(), folder / "case1.nrrd")
    return folder


def test_while_a_review_runs_neither_run_nor_batch_starts_and_each_says_why_in_one_line(
    widget, ct_node, segmentation, tmp_path
):
    _choose(widget, ct_node, segmentation)
    widget.onReview()
    review_args = widget.launcher.args
    widget.onApply()
    assert widget.ui.statusLabel.text == "A review is in progress: run when it has finished."
    widget.ui.casesFolderButton.directory = str(_cases_folder(tmp_path))
    widget.onScoreFolder()
    assert widget.ui.worklistStatusLabel.text == "A review is in progress: score when it has finished."
    assert widget._run is None and widget._batch is None and widget.launcher.args == review_args
    assert widget.ui.scoreFolderButton.text != "Cancel scoring"

    widget.launcher.on_exit(130)  # the review ends: both start again
    widget.onApply()
    assert widget._run is not None and "--review" not in widget.launcher.args


def test_while_a_run_or_a_batch_scores_a_review_does_not_start_and_says_why_in_one_line(
    widget, ct_node, segmentation, tmp_path
):
    _choose(widget, ct_node, segmentation)
    widget.onApply()
    widget.onReview()
    assert widget.ui.reviewStatusLabel.text == "A scoring run is in progress: review when it has finished."
    assert widget._review is None and "--review" not in widget.launcher.args
    widget.launcher.on_exit(130)

    widget.ui.casesFolderButton.directory = str(_cases_folder(tmp_path))
    widget.onScoreFolder()
    assert widget._batch is not None
    widget.onReview()
    assert widget.ui.reviewStatusLabel.text == "A folder is being scored: review when it has finished."
    assert widget._review is None and "--review" not in widget.launcher.args


def test_bad_input_is_one_line_in_the_review_status_and_launches_nothing(widget, ct_node, segmentation):
    _choose(widget, ct_node, None)
    widget.onReview()
    assert widget.ui.reviewStatusLabel.text == "Choose the segmentation to review."
    node, _ = segmentation
    empty = node.GetSegmentation().AddEmptySegment("", "nothing drawn")
    _choose(widget, ct_node, (node, empty))
    widget.onReview()
    assert (
        "'nothing drawn' of 'liver model' is empty on the grid of 'case1'" in widget.ui.reviewStatusLabel.text
    )
    widget._parameterNode.inputVolume = None
    widget.onReview()
    assert widget.ui.reviewStatusLabel.text.startswith("Choose the CT volume")
    assert not hasattr(widget.launcher, "args"), "a worker was launched"
    assert widget._runFolders.kept == [] and not any(Path(widget._runFolders.parent).glob("*/*"))


def test_the_workers_one_line_is_the_status_and_a_cancel_leaves_nothing(widget, ct_node, segmentation):
    _choose(widget, ct_node, segmentation)
    widget.onReview()
    folder = widget._review.request.out_dir.parent
    message = "segment.nrrd: label map is not on the grid of input.nrrd: size 24x20x24 vs 48x40x24"
    widget.launcher.send(event="error", message=message, kind="VolumeError")
    widget.launcher.on_exit(1)
    assert widget.ui.reviewStatusLabel.text.startswith(f"Failed: {message} (")
    assert widget.ui.reviewTable.rowCount() == 0 and not folder.exists()

    widget.onReview()
    folder = widget._review.request.out_dir.parent
    widget.onReview()  # the button reads "Cancel review" now
    assert widget.kills == [FakeProcess.pid]
    widget.launcher.on_exit(130)
    assert widget.ui.reviewStatusLabel.text.startswith("Cancelled")
    assert widget.ui.reviewButton.text == "Review segmentation" and not folder.exists()


# --- the real worker's review job ---


@pytest.fixture(scope="module")
def real_review(tmp_path_factory, tiny_anomalous_phantom, tiny_model):
    """The phantom's liver, as a segmentation on a coarser grid, reviewed by the real worker (blocking)."""
    from AnomalyScoutLib.io.volume import Volume, write_volume
    from AnomalyScoutLib.phantom.anatomy import LABEL_NAMES

    root = tmp_path_factory.mktemp("real_review")
    volume = tiny_anomalous_phantom.volume
    write_volume(volume, root / "ct.nrrd")
    liver = next(code for code, name in LABEL_NAMES.items() if name == "liver")
    organ = (tiny_anomalous_phantom.labels == liver)[:, ::2, ::2].astype(np.uint8)
    spacing = (volume.spacing_xyz[0] * 2, volume.spacing_xyz[1] * 2, volume.spacing_xyz[2])
    write_volume(Volume(organ, spacing, volume.origin_xyz, volume.direction), root / "coarse_liver.nrrd")

    scene = slicer.vtkMRMLScene()
    ct = load_volume_node(scene, root / "ct.nrrd", "phantom")
    node, segment = segmentation_from_labels(scene, root / "coarse_liver.nrrd")
    review_path = export_segment_mask(node, segment, ct, root / "segment.nrrd")
    outcomes: list = []
    request = RunRequest(
        root / "ct.nrrd", root / "review", tiny_model, device="cpu", threads=1, review_path=review_path
    )
    WorkerRun(
        request, blocking_launcher, RunCallbacks(finished=outcomes.append), python=sys.executable
    ).start()
    return request, outcomes[0], root


def test_the_real_review_job_lists_the_livers_slices_and_its_flags_in_the_done_line(
    real_review, scene, red_slice_logic
):
    request, outcome, root = real_review
    assert outcome.status == "done", outcome.message
    rows = read_review(request.out_dir)
    liver_slices = sitk.GetArrayFromImage(sitk.ReadImage(str(request.out_dir / "review_region.nrrd"))).any(
        axis=(1, 2)
    )
    assert sorted(r.slice_index for r in rows) == list(np.flatnonzero(liver_slices))
    assert list(outcome.flagged_slices) == [r.slice_index for r in rows if r.flagged]
    ct = load_volume_node(scene, root / "ct.nrrd", "phantom")
    SceneResults(scene).jump_to_slice(rows[0].center_ras)
    ras_to_ijk = vtk.vtkMatrix4x4()
    ct.GetRASToIJKMatrix(ras_to_ijk)
    k = ras_to_ijk.MultiplyPoint((0.0, 0.0, red_slice_logic.GetSliceOffset(), 1.0))[2]
    assert k == pytest.approx(rows[0].slice_index)  # the phantom is stored in canonical order


def test_the_clis_own_error_reaches_the_panel_as_its_one_line(real_review, tmp_path, tiny_model):
    _, _, root = real_review
    outcomes: list = []
    request = RunRequest(
        root / "ct.nrrd", tmp_path / "review", tiny_model, device="cpu", threads=1,
        review_path=root / "coarse_liver.nrrd",  # not exported onto the CT's grid: the CLI refuses it
    )  # fmt: skip
    WorkerRun(
        request, blocking_launcher, RunCallbacks(finished=outcomes.append), python=sys.executable
    ).start()
    (outcome,) = outcomes
    assert outcome.status == "failed" and outcome.exit_code == 1
    assert outcome.message.startswith("Failed: ") and "not on the grid" in outcome.message
    assert "\n" not in outcome.message and "Traceback" not in outcome.message
    assert list((tmp_path / "review").iterdir()) == []  # made by WorkerRun.start, left empty
