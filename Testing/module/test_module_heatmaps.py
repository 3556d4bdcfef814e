"""The two heatmaps (issue 16): the learned anomaly map shown by default when a run wrote one, the residual
beside it, the selector between them, and exactly the old behaviour without a map.

Scene logic runs on slicer-core's real MRML scene; the panel through the strict stand-in
(``widget_harness.py``) with a fake worker; the last test runs the real worker with a tiny model that has a
head.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from AnomalyScoutModuleLib.heatmaps import (
    ANOMALY_MAP,
    ANOMALY_MAP_FILE,
    HEATMAP_ATTRIBUTE,
    RESIDUAL,
    Heatmaps,
)
from AnomalyScoutModuleLib.scene import (
    HEAT_COLOR_TABLE,
    HEAT_TABLE_YELLOW,
    ROLE_ATTRIBUTE,
    SceneResults,
    default_threshold,
)
from module_helpers import (
    load_volume_node,
    organ_labels,
    segmentation_from_labels,
    write_anomaly_map,
    write_contract_outputs,
    write_labels,
    write_volume_file,
)

from AnomalyScoutLib.errors import ResultsError

slicer = pytest.importorskip("slicer")


@pytest.fixture
def map_run(tmp_path):
    """A run folder as a model with a head leaves it: the contract's outputs and ``anomaly_map.nrrd``."""
    out = tmp_path / "with_map"
    write_contract_outputs(out)
    return out, write_anomaly_map(out)


def _array(node) -> np.ndarray:
    return slicer.util.arrayFromVolume(node)


def _yellow_value(node) -> float:
    """The value the heat table shows yellow under the node's window (see ``SceneResults.set_threshold``)."""
    display = node.GetDisplayNode()
    low, high = display.GetWindowLevelMin(), display.GetWindowLevelMax()
    return low + HEAT_TABLE_YELLOW * (high - low)


# --- scene logic ---


def test_with_a_map_the_map_is_shown_by_default_and_the_residual_is_loaded_beside_it(
    scene, ct_node, map_run, red_slice_logic
):
    out, expected_map = map_run
    nodes = SceneResults(scene).show_results(ct_node, out, opacity=0.5)

    composite = red_slice_logic.GetSliceCompositeNode()
    assert composite.GetBackgroundVolumeID() == ct_node.GetID()
    assert composite.GetForegroundVolumeID() == nodes.anomaly_map.GetID() != nodes.residual.GetID()
    assert nodes.heatmaps.default is nodes.anomaly_map and nodes.heatmaps.choosable
    np.testing.assert_array_equal(_array(nodes.anomaly_map), expected_map)
    assert _array(nodes.residual).max() == pytest.approx(0.8)  # the residual of the same run, loaded too
    assert nodes.anomaly_map.GetName() == "case1 anomaly map" and nodes.residual.GetName() == "case1 residual"
    assert nodes.anomaly_map.GetAttribute(ROLE_ATTRIBUTE) == "anomaly_map"
    assert nodes.anomaly_map.GetAttribute(HEATMAP_ATTRIBUTE) == "anomaly_map"
    display = nodes.anomaly_map.GetDisplayNode()
    assert display.GetColorNode().GetName() == HEAT_COLOR_TABLE and display.GetApplyThreshold()
    assert display.GetLowerThreshold() == pytest.approx(default_threshold(expected_map, 0.01))
    assert 0.05 < display.GetLowerThreshold() < 0.9  # the body hidden, the hot box shown
    # a probability keeps its scale: 1 is yellow whatever the map's maximum (0.9 here)
    assert _yellow_value(nodes.anomaly_map) == pytest.approx(1.0)
    assert SceneResults.heatmap_top(nodes.anomaly_map) == 1.0
    assert SceneResults.heatmap_top(nodes.residual) == pytest.approx(0.8)
    assert SceneResults(scene).results_for(ct_node).anomaly_map is nodes.anomaly_map  # found again by role


def test_switching_shows_the_other_heatmap_and_each_keeps_its_own_threshold(
    scene, ct_node, map_run, red_slice_logic
):
    out, _ = map_run
    results = SceneResults(scene)
    heatmaps = results.show_results(ct_node, out).heatmaps
    composite = red_slice_logic.GetSliceCompositeNode()
    results.set_threshold(heatmaps.anomaly_map, 0.7)

    shown = results.show_heatmap(ct_node, heatmaps, RESIDUAL, opacity=0.3)

    assert shown is heatmaps.residual and composite.GetForegroundVolumeID() == shown.GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.3)
    assert shown.GetDisplayNode().GetLowerThreshold() == pytest.approx(default_threshold(_array(shown)))
    assert _yellow_value(shown) == pytest.approx(0.8)  # the residual's colours span its own range
    results.set_threshold(shown, 0.2)
    back = results.show_heatmap(ct_node, heatmaps, ANOMALY_MAP)
    assert composite.GetForegroundVolumeID() == back.GetID() == heatmaps.anomaly_map.GetID()
    assert back.GetDisplayNode().GetLowerThreshold() == pytest.approx(0.7)
    assert heatmaps.residual.GetDisplayNode().GetLowerThreshold() == pytest.approx(0.2)


def test_without_a_map_the_residual_is_shown_as_before_and_a_stale_map_goes(
    scene, ct_node, map_run, tmp_path, red_slice_logic
):
    results = SceneResults(scene)
    first = results.show_results(ct_node, map_run[0])
    plain = tmp_path / "plain"
    write_contract_outputs(plain)

    nodes = results.show_results(ct_node, plain)

    assert nodes.anomaly_map is None and not nodes.heatmaps.choosable
    assert not results.contains(first.anomaly_map), "the previous run's map stayed in the scene"
    assert nodes.residual is first.residual  # the same node, re-read
    assert red_slice_logic.GetSliceCompositeNode().GetForegroundVolumeID() == nodes.residual.GetID()
    values = _array(nodes.residual)
    assert nodes.residual.GetDisplayNode().GetLowerThreshold() == pytest.approx(default_threshold(values))
    with pytest.raises(ResultsError, match="^these results have no anomaly map: the model has no") as raised:
        results.show_heatmap(ct_node, nodes.heatmaps, ANOMALY_MAP)
    assert "\n" not in str(raised.value)


def test_a_reviews_map_gets_its_own_node_and_the_runs_heatmaps_are_kept(
    scene, ct_node, map_run, tmp_path, red_slice_logic
):
    results = SceneResults(scene)
    run = results.show_results(ct_node, map_run[0])
    review = tmp_path / "review"
    write_contract_outputs(review)
    review_map = write_anomaly_map(review) * 0.5
    write_volume_file(review_map, review / ANOMALY_MAP_FILE)
    heatmaps = results.show_review(ct_node, review)

    assert isinstance(heatmaps, Heatmaps) and heatmaps.choosable
    assert heatmaps.anomaly_map.GetAttribute(ROLE_ATTRIBUTE) == "review_anomaly_map"
    assert heatmaps.anomaly_map.GetName() == "case1 review anomaly map"
    assert heatmaps.residual.GetName() == "case1 review residual"
    assert red_slice_logic.GetSliceCompositeNode().GetForegroundVolumeID() == heatmaps.anomaly_map.GetID()
    np.testing.assert_array_equal(_array(heatmaps.anomaly_map), review_map)
    assert heatmaps.anomaly_map.GetID() != run.anomaly_map.GetID() and results.contains(run.anomaly_map)
    assert _array(run.anomaly_map).max() == pytest.approx(0.9)  # the run's map was not overwritten


def test_the_default_threshold_of_a_broad_map_tints_at_most_one_percent_of_the_body():
    rng = np.random.default_rng(0)
    broad = rng.uniform(0.01, 1.0, (20, 50, 50)).astype(np.float32)  # a map spread over the whole range
    broad[:, :5] = 0.0  # outside the body
    body = broad[broad > 0]

    halfway = default_threshold(broad)
    capped = default_threshold(broad, ANOMALY_MAP.max_tinted_share)

    assert (body > halfway).mean() > 0.2  # halfway would tint a quarter of the body
    assert (body > capped).mean() <= 0.01 + 1e-4
    assert RESIDUAL.max_tinted_share is None  # the residual's default is the one it always had
    # a map whose hot part is small is not raised: the hot part shows whole
    small = np.where(broad > 0, 0.02, 0.0).astype(np.float32)
    small[0, 10:12, 10:12] = 0.9
    assert default_threshold(small, 0.01) == pytest.approx(default_threshold(small))
    assert default_threshold(small, 0.01) < 0.9


def test_the_map_file_is_the_one_the_engine_writes():
    pytest.importorskip("torch")
    from AnomalyScoutLib.engine import ANOMALY_MAP_FILE as ENGINE_FILE

    assert ANOMALY_MAP_FILE == ENGINE_FILE


# --- the panel ---


def _finish_run(widget, ct_node, with_map: bool) -> None:
    widget._parameterNode.inputVolume = ct_node
    widget._parameterNode.device = "cpu"
    widget.onApply()
    out = widget._run.request.out_dir
    report = write_contract_outputs(out)
    if with_map:
        write_anomaly_map(out)
    widget.launcher.send(event="done", outputs={}, case_score=report["case_score"], flagged_slices=[15])
    widget.launcher.on_exit(0)


def _foreground(red_slice_logic):
    composite = red_slice_logic.GetSliceCompositeNode()
    return slicer.mrmlScene.GetNodeByID(composite.GetForegroundVolumeID())


def test_the_panel_shows_the_map_and_its_selector_switches_to_the_residual_and_back(
    widget, ct_node, red_slice_logic
):
    _finish_run(widget, ct_node, with_map=True)
    selector, slider = widget.ui.heatmapSelector, widget.ui.thresholdSlider
    heatmaps = widget._resultNodes.heatmaps

    assert [selector.itemText(i) for i in range(2)] == ["Anomaly map", "Residual"]
    assert selector.enabled is True and selector.currentData == "anomaly_map"
    assert _foreground(red_slice_logic) is heatmaps.anomaly_map
    assert slider.maximum == 1.0
    assert slider.value == pytest.approx(heatmaps.anomaly_map.GetDisplayNode().GetLowerThreshold())
    residual_threshold = heatmaps.residual.GetDisplayNode().GetLowerThreshold()
    slider.value = 0.95  # the user raises the map's threshold above the residual's maximum (0.8)
    assert heatmaps.anomaly_map.GetDisplayNode().GetLowerThreshold() == pytest.approx(0.95)

    selector.setCurrentIndex(selector.findData("residual"))  # as the user's choice does, through the signal

    assert _foreground(red_slice_logic) is heatmaps.residual
    assert slider.maximum == pytest.approx(0.8)
    # the residual's own threshold, not the map's clamped to the residual's maximum
    assert slider.value == pytest.approx(residual_threshold)
    assert heatmaps.residual.GetDisplayNode().GetLowerThreshold() == pytest.approx(residual_threshold)
    slider.value = 0.3
    assert heatmaps.residual.GetDisplayNode().GetLowerThreshold() == pytest.approx(0.3)
    assert heatmaps.anomaly_map.GetDisplayNode().GetLowerThreshold() == pytest.approx(0.95)

    selector.setCurrentIndex(selector.findData("anomaly_map"))
    assert _foreground(red_slice_logic) is heatmaps.anomaly_map
    assert slider.maximum == 1.0 and slider.value == pytest.approx(0.95)


def test_results_without_a_map_show_the_residual_and_leave_the_selector_disabled(
    widget, ct_node, red_slice_logic
):
    _finish_run(widget, ct_node, with_map=False)
    selector, residual = widget.ui.heatmapSelector, widget._resultNodes.residual

    assert selector.enabled is False and selector.currentData == "residual"
    assert _foreground(red_slice_logic) is residual
    assert widget.ui.thresholdSlider.maximum == pytest.approx(0.8)
    assert widget.ui.thresholdSlider.value == pytest.approx(default_threshold(_array(residual)))


def test_a_finished_reviews_map_is_shown_and_the_selector_moves_between_the_reviews_heatmaps(
    widget, ct_node, red_slice_logic, tmp_path
):
    _finish_run(widget, ct_node, with_map=False)  # a score run's residual first: the selector is off
    node, segment = segmentation_from_labels(
        slicer.mrmlScene, write_labels(organ_labels(), tmp_path / "o.nrrd")
    )
    widget._parameterNode.inputVolume = ct_node
    widget.ui.reviewSegmentSelector.setCurrentNode(node)
    widget.ui.reviewSegmentSelector.setCurrentSegmentID(segment)
    widget.onReview()
    out = widget._review.request.out_dir
    write_contract_outputs(out)
    (out / "review.csv").write_text("slice_index,position,risk,flagged\n7,0.3125,1.4,1\n", encoding="utf-8")
    write_anomaly_map(out)
    widget.launcher.send(event="done", outputs={}, case_score=0.9, flagged_slices=[7])
    widget.launcher.on_exit(0)

    selector = widget.ui.heatmapSelector
    shown = _foreground(red_slice_logic)
    assert shown.GetAttribute(ROLE_ATTRIBUTE) == "review_anomaly_map"
    assert selector.enabled is True and selector.currentData == "anomaly_map"
    selector.setCurrentIndex(selector.findData("residual"))
    assert _foreground(red_slice_logic).GetAttribute(ROLE_ATTRIBUTE) == "review_residual"


def test_a_closed_scene_disables_the_selector(widget, ct_node, scene):
    _finish_run(widget, ct_node, with_map=True)
    assert widget.ui.heatmapSelector.enabled is True
    scene.Clear(0)  # what closing the scene does: StartCloseEvent, then the nodes go
    widget.onSceneStartClose()
    assert widget.ui.heatmapSelector.enabled is False
    widget.ui.heatmapSelector.setCurrentIndex(1)  # a late choice changes nothing and raises nothing


# --- the real worker with a head ---


@pytest.fixture(scope="module")
def head_model(tiny_model, tmp_path_factory):
    """The session's tiny random model with a tiny random head: the worker then writes the map."""
    torch = pytest.importorskip("torch")
    from AnomalyScoutLib.anomaly_map.head import AnomalyHead, HeadConfig
    from AnomalyScoutLib.anomaly_map.training import attach_head
    from AnomalyScoutLib.model_file import AnomalyModel

    model = AnomalyModel.load(tiny_model)
    torch.manual_seed(0)
    attach_head(model, AnomalyHead(HeadConfig(channels=(4, 8))), {})
    return model.save(tmp_path_factory.mktemp("head") / "tiny-with-head.safetensors")


def test_the_real_workers_map_is_shown_by_default_on_the_ct_grid(
    scene, head_model, tiny_anomalous_phantom, tmp_path, red_slice_logic
):
    from AnomalyScoutModuleLib.worker_run import RunCallbacks, RunRequest, WorkerRun, blocking_launcher

    from AnomalyScoutLib.io.volume import write_volume

    ct_path = tmp_path / "ct.nrrd"
    write_volume(tiny_anomalous_phantom.volume, ct_path)
    outcomes: list = []
    request = RunRequest(ct_path, tmp_path / "out", head_model, device="cpu", threads=1)
    WorkerRun(
        request, blocking_launcher, RunCallbacks(finished=outcomes.append), python=sys.executable
    ).start()
    assert outcomes[0].status == "done", outcomes[0].message
    ct = load_volume_node(scene, ct_path, "phantom")

    nodes = SceneResults(scene).show_results(ct, request.out_dir)

    assert red_slice_logic.GetSliceCompositeNode().GetForegroundVolumeID() == nodes.anomaly_map.GetID()
    assert nodes.anomaly_map.GetImageData().GetDimensions() == ct.GetImageData().GetDimensions()
    values = _array(nodes.anomaly_map)
    assert values.min() >= 0 and 0 < values.max() <= 1
    assert nodes.residual is not None and _array(nodes.residual).max() > 0
    threshold = nodes.anomaly_map.GetDisplayNode().GetLowerThreshold()
    assert (values[values > 0] > threshold).mean() <= 0.01 + 1e-3  # the CT stays readable
