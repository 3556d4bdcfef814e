"""AnomalyScout.py as Slicer loads and uses it: import with only Slicer's bundled packages, then the widget.

``strict_slicer`` stands in for qt, ctk and slicer.util with the names of Slicer's real API
(``slicer_api.py``) and blocks torch, tqdm, safetensors, psutil and dask; the MRML scene and nodes are
slicer-core's real ones. The worker is a fake launcher that plays the worker's JSON lines, as in
``test_module_worker_run.py``; the widget fixture is ``widget_harness.py``'s.
"""

from __future__ import annotations

import importlib
import importlib.util
import types
from pathlib import Path

import pytest
import vtk
from module_helpers import write_contract_outputs
from strict_slicer import NOT_BUNDLED
from widget_harness import MODULE_DIR, FakeProcess, import_anomalyscout


def test_the_module_imports_with_only_what_slicer_bundles(slicer_app):
    module = import_anomalyscout(slicer_app)
    assert slicer_app.blocker.attempts == [], "the module tried to import a package Slicer does not bundle"
    import sys

    assert [name for name in sys.modules if name.split(".")[0] in NOT_BUNDLED] == []
    module.AnomalyScout(types.SimpleNamespace())  # the module object, as Slicer creates it at start-up


def test_the_module_folder_holds_one_script_and_the_helpers_are_a_package():
    assert sorted(p.name for p in MODULE_DIR.glob("*.py")) == ["AnomalyScout.py"]
    assert (MODULE_DIR / "AnomalyScoutModuleLib" / "__init__.py").is_file()


def test_setup_builds_the_panel_and_choosing_a_volume_enables_run(widget, ct_node):
    assert widget.ui.modelSelector.currentData, "no shipped model was listed"
    regressor = str(MODULE_DIR.parent / "models" / "position.safetensors")
    assert widget.ui.modelSelector.findData(regressor) == -1, "the body-part regressor was listed as a model"
    assert widget.ui.applyButton.enabled is False
    widget._parameterNode.inputVolume = ct_node
    assert widget.ui.applyButton.enabled is True
    assert widget.ui.applyButton.text == "Run"


def test_a_run_shows_progress_then_results_with_the_elapsed_time_and_cleans_its_folder(widget, ct_node):
    widget._parameterNode.inputVolume = ct_node
    widget._parameterNode.device = "cpu"
    widget.onApply()
    launcher, run = widget.launcher, widget._run
    assert launcher.args[1:3] == ["-m", "AnomalyScoutLib.worker"] and "--model" in launcher.args
    assert widget.ui.applyButton.text == "Cancel" and widget.ui.progressBar.visible is True
    launcher.send(event="started", slices=24, device="cpu", mode="fast", model_id="m")
    launcher.send(event="progress", i=1, n=24, slice_index=0, score=0.2, eta_s=30.0)
    assert widget.ui.progressBar.format == "slice 1/24, 30 s left"
    assert widget._liveNodes.table.GetNumberOfRows() == 1
    report = write_contract_outputs(run.request.out_dir)
    launcher.send(event="done", outputs={}, case_score=report["case_score"], flagged_slices=[15])
    launcher.on_exit(0)
    assert widget.ui.progressBar.visible is False and widget.ui.applyButton.text == "Run"
    assert widget.ui.statusLabel.text.startswith("Done: 1 of 24 slices flagged. (")
    assert widget.ui.flaggedSlicesTable.rowCount() == 1
    assert "Scoring 24 slices on cpu" in widget.ui.logText.toPlainText()
    assert not run.request.input_path.exists(), "the exported CT was left behind"
    assert widget._runFolders.kept == [run.request.out_dir.parent]
    widget.cleanup()
    assert not run.request.out_dir.parent.exists(), "the run folder outlived the module"


def test_a_scene_closed_during_a_run_cancels_it_and_its_late_exit_creates_no_nodes(widget, ct_node, scene):
    widget._parameterNode.inputVolume = ct_node
    widget._parameterNode.device = "cpu"
    widget.onApply()
    run_folder = widget._run.request.out_dir.parent
    scene.Clear(0)
    assert widget.kills == [FakeProcess.pid]
    widget.launcher.on_exit(130)  # the worker's exit arrives after the close
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 0
    assert not run_folder.exists()
    assert widget._parameterNode is not None, "no new parameter node after the scene closed"
    assert widget.ui.applyButton.enabled is False


def test_a_plot_click_during_a_live_run_does_not_jump_to_an_unknown_slice(widget, ct_node, red_slice_logic):
    widget._parameterNode.inputVolume = ct_node
    widget._parameterNode.device = "cpu"
    widget.onApply()
    widget.launcher.send(event="started", slices=24, device="cpu", mode="fast", model_id="m")
    widget.launcher.send(event="progress", i=1, n=24, slice_index=3, score=0.2, eta_s=None)
    offset = red_slice_logic.GetSliceOffset()
    series = vtk.vtkStringArray()
    series.InsertNextValue(widget._liveNodes.score_series.GetID())
    points = vtk.vtkIdTypeArray()
    points.InsertNextValue(0)
    selections = vtk.vtkCollection()
    selections.AddItem(points)
    widget.onPlotSelection(series, selections)
    assert red_slice_logic.GetSliceOffset() == offset
    assert "known when the run has finished" in widget.ui.statusLabel.text


def test_exit_stops_observing_the_parameter_node_and_enter_resumes(widget, ct_node):
    widget.exit()
    widget._parameterNode.inputVolume = ct_node
    assert widget.ui.applyButton.enabled is False
    widget.enter()
    assert widget.ui.applyButton.enabled is True


def test_run_without_torch_says_the_pytorch_extension_is_missing(widget, ct_node, slicer_app, monkeypatch):
    real_plan = importlib.import_module("AnomalyScoutModuleLib.dependencies").install_plan
    monkeypatch.setattr(
        widget.module,
        "install_plan",
        lambda: real_plan(find_spec=lambda n: None if n == "torch" else object()),
    )
    widget._parameterNode.inputVolume = ct_node
    with pytest.raises(Exception, match="PyTorch extension"):
        widget.onApply()
    assert "PyTorch" in slicer_app.confirmations[0]
    assert widget._run is None


def test_the_phantom_is_registered_as_sample_data(slicer_app):
    module = import_anomalyscout(slicer_app)
    module.registerSampleData()
    (source,) = slicer_app.sample_sources
    assert source["category"] == "AnomalyScout" and callable(source["customDownloader"])
    assert Path(source["thumbnailFileName"]).is_file()


def test_a_worklist_dicom_case_is_loaded_through_the_dicom_module(slicer_app, ct_node, tmp_path):
    from AnomalyScoutModuleLib.case_loading import load_case

    folder = tmp_path / "case_dicom"
    folder.mkdir()
    (folder / "1.dcm").write_bytes(b"")
    calls = []

    class FakeDicomUtils:
        class TemporaryDICOMDatabase:
            def __enter__(self):
                calls.append("open")

            def __exit__(self, *_):
                calls.append("close")

        @staticmethod
        def importDicom(path):  # noqa: N802
            calls.append(("import", path))

        @staticmethod
        def seriesUIDsForFiles(files):  # noqa: N802
            return {"1.2.3"} if files else set()

        @staticmethod
        def loadSeriesByUID(uids):  # noqa: N802
            calls.append(("load", uids))
            return [ct_node.GetID()]

    loaded = load_case(folder, slicer_app.scene, slicer_app.modules.get, FakeDicomUtils)
    assert loaded is ct_node
    assert calls == ["open", ("import", str(folder)), ("load", ["1.2.3"]), "close"]


def test_the_worker_python_is_pythonslicer_never_the_slicer_binary(tmp_path):
    from AnomalyScoutModuleLib.worker_run import WorkerStartError, python_executable

    slicer_binary = tmp_path / "bin" / "SlicerApp-real"
    slicer_binary.parent.mkdir()
    slicer_binary.write_text("")
    with pytest.raises(WorkerStartError, match="PythonSlicer"):
        python_executable(lambda name: None, str(slicer_binary))
    (tmp_path / "bin" / "PythonSlicer").write_text("")
    assert python_executable(lambda name: None, str(slicer_binary)) == str(tmp_path / "bin" / "PythonSlicer")
    assert python_executable(lambda name: "/opt/Slicer/bin/PythonSlicer", str(slicer_binary)).endswith(
        "PythonSlicer"
    )


def test_the_stand_in_refuses_names_slicer_does_not_have(slicer_app):
    import qt
    import slicer

    with pytest.raises(AttributeError):
        slicer.util.loadVolumes  # noqa: B018 - not a Slicer function
    with pytest.raises(AttributeError):
        slicer.vtkCommand  # noqa: B018 - vtk.vtkCommand is the real one
    with pytest.raises(AttributeError):
        qt.QSettings().valueOf  # noqa: B018
    assert importlib.util.find_spec("vtk") is not None


def test_the_qprocess_fallback_reads_the_output_through_qbytearray_data(slicer_app):
    from AnomalyScoutModuleLib.worker_run import _QProcessHandle

    lines, codes = [], []
    args = ["PythonSlicer", "-m", "AnomalyScoutLib.worker"]
    handle = _QProcessHandle(args, "/", lines.append, codes.append)
    (process,) = slicer_app.processes
    assert handle.pid == 4321 and process.calls[-1][0] == "start"
    encoded = '{"event": "warning", "message": "caf\u00e9"}\ntail'.encode()
    split = encoded.index(b"\xa9")  # between the two bytes of the accented letter
    for chunk in (encoded[:split], encoded[split:]):
        process._output.append(chunk)
        process.emit("readyReadStandardOutput")
    process.emit("finished", 0, 0)
    assert lines == ['{"event": "warning", "message": "caf\u00e9"}', "tail"] and codes == [0]
