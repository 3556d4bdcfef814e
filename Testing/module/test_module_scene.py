"""The scene logic on a real MRML scene (slicer-core): nodes, colours, layers, tables, plot, navigation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import vtk
from module_helpers import ANOMALY_SLICE, write_contract_outputs

slicer = pytest.importorskip("slicer")

from AnomalyScoutModuleLib.scene import (  # noqa: E402
    FOLDER_NAME,
    HEAT_COLOR_TABLE,
    SceneResults,
    default_threshold,
    export_segment_mask,
    export_volume,
    read_score_report,
)

from AnomalyScoutLib.errors import ResultsError, VolumeError  # noqa: E402


def _column(table, name):
    return slicer.util.arrayFromTableColumn(table, name).copy()


def _node_count(scene):
    return scene.GetNumberOfNodes()


def test_shows_the_heatmap_in_the_foreground_over_the_unchanged_ct(scene, ct_node, run_dir):
    out, _ = run_dir
    before = slicer.util.arrayFromVolume(ct_node).copy()
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")

    nodes = SceneResults(scene).show_results(ct_node, out, opacity=0.4)

    assert composite.GetBackgroundVolumeID() == ct_node.GetID()
    assert composite.GetForegroundVolumeID() == nodes.residual.GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.4)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(ct_node), before)
    assert ct_node.GetAttributeNames() in ((), None)


def test_heatmap_uses_the_heat_table_and_hides_low_residuals(scene, ct_node, run_dir):
    out, _ = run_dir
    residual = SceneResults(scene).show_results(ct_node, out).residual
    display = residual.GetDisplayNode()
    values = slicer.util.arrayFromVolume(residual)

    assert display.GetColorNode().GetName() == HEAT_COLOR_TABLE
    assert display.GetApplyThreshold()
    assert display.GetLowerThreshold() == pytest.approx(default_threshold(values))
    # the body's background residual is below the threshold, the anomaly above it
    assert values[values > 0].min() < display.GetLowerThreshold() < values.max()


def test_residual_volume_sits_on_the_input_grid(scene, ct_node, run_dir):
    out, _ = run_dir
    residual = SceneResults(scene).show_results(ct_node, out).residual
    input_matrix, residual_matrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    ct_node.GetIJKToRASMatrix(input_matrix)
    residual.GetIJKToRASMatrix(residual_matrix)

    assert residual.GetImageData().GetDimensions() == ct_node.GetImageData().GetDimensions()
    assert slicer.util.arrayFromVTKMatrix(residual_matrix) == pytest.approx(
        slicer.util.arrayFromVTKMatrix(input_matrix)
    )


def test_rerunning_replaces_results_instead_of_piling_up_nodes(scene, ct_node, run_dir, tmp_path):
    out, _ = run_dir
    results = SceneResults(scene)
    first = results.show_results(ct_node, out, with_reconstruction=True)
    count = _node_count(scene)
    second_run = tmp_path / "run2"
    report = write_contract_outputs(second_run, flagged=(3, 7))

    second = results.show_results(ct_node, second_run, with_reconstruction=True)

    assert _node_count(scene) == count
    assert second.residual is first.residual and second.table is first.table
    assert sorted(_column(second.flagged_table, "slice_index")) == [3, 7]
    assert _column(second.table, "score") == pytest.approx([s["score"] for s in report["slices"]])


def test_reconstruction_is_loaded_only_when_asked_and_removed_when_no_longer_wanted(scene, ct_node, run_dir):
    out, _ = run_dir
    results = SceneResults(scene)
    assert results.show_results(ct_node, out).reconstruction is None

    shown = results.show_results(ct_node, out, with_reconstruction=True)
    assert shown.reconstruction.GetDisplayNode().GetWindow() == pytest.approx(
        ct_node.GetDisplayNode().GetWindow()
    )

    results.show_results(ct_node, out)
    assert results.results_for(ct_node).reconstruction is None
    assert scene.GetNodeByID(shown.reconstruction.GetID()) is None


def test_results_of_two_inputs_stay_apart(scene, ct_node, run_dir, ct_path):
    out, _ = run_dir
    other = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "case2")
    results = SceneResults(scene)
    first = results.show_results(ct_node, out)
    second = results.show_results(other, out)

    assert first.residual is not second.residual
    results.remove_results(other)
    assert results.results_for(other) is None
    assert results.results_for(ct_node).residual is first.residual


def test_score_table_and_plot_hold_every_slice_and_the_flagged_ones(scene, ct_node, run_dir):
    out, report = run_dir
    nodes = SceneResults(scene).show_results(ct_node, out)

    assert _column(nodes.table, "slice_index") == pytest.approx([s["slice_index"] for s in report["slices"]])
    assert _column(nodes.table, "position") == pytest.approx([s["position"] for s in report["slices"]])
    assert list(_column(nodes.flagged_table, "slice_index")) == [ANOMALY_SLICE]
    assert nodes.report.case_score == report["case_score"] and nodes.report.model_id == "test-model"
    series = [nodes.chart.GetNthPlotSeriesNode(i) for i in range(nodes.chart.GetNumberOfPlotSeriesNodes())]
    assert {s.GetID() for s in series} == {
        nodes.score_series.GetID(),
        nodes.threshold_series.GetID(),
        nodes.flagged_series.GetID(),
    }
    assert (
        nodes.score_series.GetXColumnName() == "position" and nodes.score_series.GetYColumnName() == "score"
    )
    assert nodes.threshold_series.GetYColumnName() == "threshold"
    assert nodes.flagged_series.GetTableNode() is nodes.flagged_table


def test_slices_outside_the_models_range_are_marked_in_the_table_and_the_plot_title(scene, ct_node, tmp_path):
    out = tmp_path / "run"
    report = write_contract_outputs(out, flagged=(2,))
    for row in report["slices"]:
        row["in_range"] = row["slice_index"] < 20  # the top slices lie above the model's range
    (out / "scores.json").write_text(json.dumps(report))

    nodes = SceneResults(scene).show_results(ct_node, out)

    in_range = _column(nodes.table, "in_range")
    assert list(in_range) == [float(row["slice_index"] < 20) for row in report["slices"]]
    outside = len(report["slices"]) - 20
    assert f"{outside} of {len(report['slices'])} slices outside the model's range" in nodes.chart.GetTitle()


def test_flagged_list_is_sorted_by_score(scene, ct_node, tmp_path):
    out = tmp_path / "run"
    report = write_contract_outputs(out, flagged=(2, 9, 20))
    # scores in neither the slices' order nor its reverse, so that only a sort by score gives 9, 2, 20
    for row in report["slices"]:
        row["score"] = {9: 3.0, 2: 2.0, 20: 1.5}.get(row["slice_index"], 0.5)
    (out / "scores.json").write_text(json.dumps(report))

    nodes = SceneResults(scene).show_results(ct_node, out)

    assert list(_column(nodes.flagged_table, "slice_index")) == [9, 2, 20]


def test_a_slice_flagged_for_metal_leads_the_flagged_list_and_shows_its_area(scene, ct_node, tmp_path):
    out = tmp_path / "run"
    report = write_contract_outputs(out, flagged=(2, 9, 20))
    # Slice 20's residual score is the lowest, but its body holds metal: percentile 100, listed first.
    for row in report["slices"]:
        k = row["slice_index"]
        row["score"] = {9: 3.0, 2: 2.0, 20: 1.5}.get(k, 0.5)
        row["percentile"] = {9: 99.5, 2: 99.2, 20: 100.0}.get(k, 50.0)
        row["beyond_normal_mm2"] = 12.5 if k == 20 else 0.0
    report["slices"][0]["beyond_normal_mm2"] = None  # a model without an envelope writes null
    (out / "scores.json").write_text(json.dumps(report))

    nodes = SceneResults(scene).show_results(ct_node, out)

    assert list(_column(nodes.flagged_table, "slice_index")) == [20, 9, 2]
    assert list(_column(nodes.flagged_table, "beyond_normal_mm2")) == [12.5, 0.0, 0.0]
    assert _column(nodes.table, "beyond_normal_mm2")[0] == 0.0


def test_live_scores_fill_the_plot_as_progress_lines_arrive(scene, ct_node, run_dir):
    out, _ = run_dir
    results = SceneResults(scene)
    results.show_results(ct_node, out)
    nodes = results.start_live_scores(ct_node)
    assert nodes.table.GetNumberOfRows() == 0 and nodes.flagged_table.GetNumberOfRows() == 0

    for k, score in ((4, 0.3), (5, 0.7)):
        results.add_live_score(nodes, k, (k + 0.5) / 24, score)

    assert list(_column(nodes.table, "score")) == pytest.approx([0.3, 0.7])
    assert math.isnan(_column(nodes.table, "percentile")[0])


def test_a_cancelled_rerun_gets_back_the_scores_of_the_results_still_shown(scene, ct_node, run_dir, tmp_path):
    out, report = run_dir
    results = SceneResults(scene)
    results.show_results(ct_node, out)
    nodes = results.start_live_scores(ct_node)
    results.add_live_score(nodes, 0, 0.02, 5.0)

    restored = results.restore_scores(ct_node)

    assert _column(restored.table, "score") == pytest.approx([s["score"] for s in report["slices"]])
    assert list(_column(restored.flagged_table, "slice_index")) == [ANOMALY_SLICE]
    never_shown = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fresh")
    assert results.restore_scores(never_shown).table.GetNumberOfRows() == 0


def test_clicking_a_flagged_row_or_plot_point_moves_every_slice_view_to_that_slice(
    scene, ct_node, run_dir, red_slice_logic
):
    out, report = run_dir
    yellow = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    yellow.SetOrientation("Sagittal")
    results = SceneResults(scene)
    nodes = results.show_results(ct_node, out)
    expected = report["slices"][ANOMALY_SLICE]["center_ras"]

    center = results.center_of_row(nodes.flagged_table, 0)
    assert center == pytest.approx(expected)
    assert results.center_of_plot_point(nodes.flagged_series.GetID(), 0) == pytest.approx(expected)
    results.jump_to_slice(center)

    assert red_slice_logic.GetSliceOffset() == pytest.approx(expected[2])  # axial: S coordinate
    assert yellow.GetSliceToRAS().GetElement(0, 3) == pytest.approx(expected[0])  # sagittal: R coordinate
    assert results.center_of_slice(nodes.table, ANOMALY_SLICE) == pytest.approx(expected)
    with pytest.raises(IndexError):
        results.center_of_row(nodes.flagged_table, 5)
    with pytest.raises(IndexError, match="slice 99"):
        results.center_of_slice(nodes.table, 99)


def test_results_are_grouped_under_the_input_in_the_subject_hierarchy(scene, ct_node, run_dir):
    out, _ = run_dir
    nodes = SceneResults(scene).show_results(ct_node, out, with_reconstruction=True)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    folder = hierarchy.GetItemChildWithName(hierarchy.GetItemByDataNode(ct_node), FOLDER_NAME)

    assert folder
    for node in (nodes.residual, nodes.reconstruction, nodes.table, nodes.chart, nodes.flagged_series):
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == folder


def test_results_are_found_again_after_the_scene_is_saved_and_reloaded(scene, ct_node, run_dir, tmp_path):
    out, _ = run_dir
    nodes = SceneResults(scene).show_results(ct_node, out)
    scene_file = tmp_path / "saved.mrml"
    scene.SetURL(str(scene_file))
    assert scene.Commit()
    reloaded = slicer.vtkMRMLScene()
    reloaded.SetURL(str(scene_file))
    reloaded.Connect()

    found = SceneResults(reloaded).results_for(reloaded.GetNodeByID(ct_node.GetID()))

    assert found is not None
    assert found.residual.GetName() == nodes.residual.GetName()
    assert found.chart.GetNumberOfPlotSeriesNodes() == 3


def test_shows_the_chart_in_a_layout_with_a_plot_view(scene, ct_node, run_dir):
    out, _ = run_dir
    app_logic = slicer.vtkMRMLApplicationLogic()
    app_logic.SetMRMLScene(scene)
    layout = scene.AddNode(slicer.vtkMRMLLayoutNode())
    layout.SetViewArrangement(layout.SlicerLayoutFourUpView)
    view = scene.AddNewNodeByClass("vtkMRMLPlotViewNode")
    plots = slicer.vtkSlicerPlotsLogic()
    plots.SetMRMLScene(scene)
    plots.SetMRMLApplicationLogic(app_logic)
    results = SceneResults(scene)
    chart = results.show_results(ct_node, out).chart

    results.show_chart(chart, plots)

    assert layout.GetViewArrangement() != layout.SlicerLayoutFourUpView
    assert view.GetPlotChartNodeID() == chart.GetID()


@pytest.mark.parametrize("missing", ["scores.json", "residual.nrrd"])
def test_a_folder_without_an_output_gives_a_results_error_and_no_nodes(scene, ct_node, run_dir, missing):
    out, _ = run_dir
    (out / missing).unlink()
    count = _node_count(scene)
    with pytest.raises(ResultsError, match=missing.split(".")[0]):
        SceneResults(scene).show_results(ct_node, out)
    if missing == "scores.json":
        assert _node_count(scene) == count


def test_a_score_file_without_slices_is_refused_with_its_path(tmp_path):
    (tmp_path / "scores.json").write_text(json.dumps({"case_score": 1.0}))
    with pytest.raises(ResultsError, match="scores.json"):
        read_score_report(tmp_path)


def test_null_percentiles_of_an_uncalibrated_model_become_nan(run_dir):
    out, report = run_dir
    report["slices"][0]["percentile"] = None
    report["case_percentile"] = None
    (out / "scores.json").write_text(json.dumps(report))
    parsed = read_score_report(out)
    assert math.isnan(parsed.slices[0].percentile) and math.isnan(parsed.case_percentile)


def test_default_threshold_lies_between_the_typical_and_the_strongest_residual():
    rng = np.random.default_rng(1)
    residual = np.zeros((4, 10, 10), np.float32)
    residual[:, 2:8, 2:8] = rng.uniform(0.01, 0.1, (4, 6, 6))
    residual[2, 4, 4] = 1.0
    threshold = default_threshold(residual)
    assert np.count_nonzero(residual >= threshold) == 1
    assert default_threshold(np.zeros((2, 2, 2))) == 0.0


def test_exports_the_input_for_the_worker_without_touching_the_node(scene, ct_node, ct_path, tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    storage_file = ct_node.GetStorageNode().GetFileName()
    modified = ct_node.GetMTime()

    path = export_volume(ct_node, tmp_path / "export" / "input.nrrd")

    exported, original = sitk.ReadImage(str(path)), sitk.ReadImage(str(ct_path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(exported), sitk.GetArrayFromImage(original))
    assert exported.GetOrigin() == pytest.approx(original.GetOrigin())
    assert exported.GetSpacing() == pytest.approx(original.GetSpacing())
    assert exported.GetDirection() == pytest.approx(original.GetDirection())
    assert ct_node.GetStorageNode().GetFileName() == storage_file and ct_node.GetMTime() == modified


def test_exports_one_segment_as_a_mask_on_the_ct_grid(scene, ct_node, tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(ct_node)
    labels = slicer.util.arrayFromVolume(ct_node) * 0
    labels[5:9, 10:20, 12:30] = 1
    labels[15:18, 20:25, 20:25] = 2
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    labelmap.CopyOrientation(ct_node)
    slicer.util.updateVolumeFromArray(labelmap, labels.astype(np.int16))
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    liver = segmentation.GetSegmentation().GetNthSegmentID(0)

    path = export_segment_mask(segmentation, liver, ct_node, tmp_path / "mask.nrrd")

    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert mask.shape == labels.shape
    np.testing.assert_array_equal(mask > 0, labels == 1)
    with pytest.raises(VolumeError, match="no segment"):
        export_segment_mask(segmentation, "nothing", ct_node, tmp_path / "m2.nrrd")
