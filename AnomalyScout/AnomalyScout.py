"""AnomalyScout: the 3D Slicer module shell (metadata, widget, logic glue, self-test).

Thin on purpose: the helpers live in the ``AnomalyScoutModuleLib`` package beside this file (scene logic
without qt, the worker process, the segmentation review, the worklist, case loading, dependencies, run
folders, device advice, sample data), tested with pytest outside Slicer. Slicer imports this file when it
starts, before anything could be installed, so it and the helpers import only what Slicer bundles; torch
and the other packages of ``AnomalyScoutLogic.ensureDependencies`` are imported inside the functions that
run after it.
``Testing/module/test_module_load.py`` imports it as Slicer would, with those packages blocked, and drives
the widget through a stand-in for qt, ctk and slicer.util whose names come from Slicer's source.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

try:
    import AnomalyScoutLib  # noqa: F401 - installed next to this module by the extension
except ImportError:  # a source checkout: the library sits next to the module folder
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from AnomalyScoutModuleLib.case_loading import load_case
from AnomalyScoutModuleLib.dependencies import install, install_plan
from AnomalyScoutModuleLib.device_advice import cuda_memory_bytes, device_advice
from AnomalyScoutModuleLib.heatmaps import KINDS, Heatmaps, kind_named
from AnomalyScoutModuleLib.model_files import is_model_file, model_files_in
from AnomalyScoutModuleLib.review import ReviewRow, check_review_inputs, read_review, review_summary
from AnomalyScoutModuleLib.run_folders import RunFolders
from AnomalyScoutModuleLib.sample_data import register_sample_data
from AnomalyScoutModuleLib.scene import SceneResults, export_segment_mask, export_volume
from AnomalyScoutModuleLib.worker_run import (
    RunCallbacks,
    RunOutcome,
    RunRequest,
    WorkerRun,
    blocking_launcher,
    format_eta,
    slicer_launcher,
)
from AnomalyScoutModuleLib.worklist import (
    BatchProgress,
    BatchScoring,
    Worklist,
    find_cases,
    read_worklist,
    results_dir,
)

from AnomalyScoutLib.errors import AnomalyScoutError

__all__ = [
    "AnomalyScout",
    "AnomalyScoutLogic",
    "AnomalyScoutParameterNode",
    "AnomalyScoutTest",
    "AnomalyScoutWidget",
]

MODEL_SETTINGS_KEY = "AnomalyScout/ModelFiles"
RESULTS_SUBFOLDER = "anomalyscout"
MODULE_DIR = Path(__file__).resolve().parent
#: Where the shipped models are: the extension installs them under the module's Resources (a top-level
#: ``models`` folder on ``sys.path`` could collide with other packages); a source checkout keeps them in
#: ``models/`` beside the library.
SHIPPED_MODEL_DIRS = (MODULE_DIR / "Resources" / "Models", MODULE_DIR.parent / "models")


class AnomalyScout(ScriptedLoadableModule):
    def __init__(self, parent) -> None:
        super().__init__(parent)
        parent.title = "AnomalyScout"
        parent.categories = ["Quantification"]
        parent.dependencies = []
        parent.contributors = ["AnomalyScout contributors"]
        parent.helpText = (
            "Finds CT slices unlike the normal anatomy a position-conditioned StyleGAN2 has learned: a "
            "heatmap over the CT (the learned anomaly map when the model has one, else the residual; either "
            "can be shown), per-slice scores with calibrated flags and an annotation worklist."
        )
        parent.acknowledgementText = "Built on 3D Slicer, PyTorch and the PyTorch extension."
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """A phantom CT with a liver tumour in the Sample Data module (made on the spot, nothing downloaded)."""
    import SampleData

    register_sample_data(
        SampleData.SampleDataLogic,
        slicer.util.loadVolume,
        lambda: slicer.app.temporaryPath,
        MODULE_DIR / "Resources" / "Icons" / "AnomalyScoutPhantom.png",
    )


@parameterNodeWrapper
class AnomalyScoutParameterNode:
    inputVolume: slicer.vtkMRMLScalarVolumeNode
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    mode: Annotated[str, Choice(["fast", "accurate", "denoise"])] = "fast"
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.6
    showReconstruction: bool = False


class AnomalyScoutLogic(ScriptedLoadableModuleLogic):
    """Turns the widget's choices into a worker run and its outputs into scene nodes."""

    def getParameterNode(self) -> AnomalyScoutParameterNode:
        return AnomalyScoutParameterNode(super().getParameterNode())

    @staticmethod
    def modelFiles() -> list[Path]:
        """Shipped models (:data:`SHIPPED_MODEL_DIRS`), then the user's added files that still exist."""
        shipped = model_files_in(SHIPPED_MODEL_DIRS)  # not the body-part regressor beside them
        added = [Path(p) for p in _as_list(qt.QSettings().value(MODEL_SETTINGS_KEY))]
        return [p for p in dict.fromkeys(shipped + added) if p.is_file()]

    @staticmethod
    def rememberModelFile(path: str) -> None:
        added = _as_list(qt.QSettings().value(MODEL_SETTINGS_KEY))
        qt.QSettings().setValue(MODEL_SETTINGS_KEY, list(dict.fromkeys([*added, path])))

    @staticmethod
    def ensureDependencies() -> bool:
        """Offer to install what is missing, once, listing everything; ``False`` if the user declined.

        In testing mode ``confirmOkCancelDisplay`` answers OK by itself, so the self-test installs too.

        Raises:
            InstallError: torch is too old, the PyTorch extension is missing or an install failed.
        """
        plan = install_plan()
        plan.check()
        if plan.empty:
            return True
        if not slicer.util.confirmOkCancelDisplay(plan.describe(), "AnomalyScout needs Python packages"):
            return False
        try:
            import PyTorchUtils

            torch_utils = PyTorchUtils.PyTorchUtilsLogic()
        except ImportError:
            torch_utils = None
        with slicer.util.WaitCursor():
            install(plan, torch_utils, slicer.util.pip_install)
        return True

    def prepareRun(
        self, params, model: Path | None, segmentation, segmentId: str, runDir: Path, review: bool = False
    ) -> RunRequest:
        """Export the CT and the segment for the worker; the input nodes are not touched.

        The segment goes onto the CT's grid: the organ mask of a score run, or with ``review`` the
        segmentation the worker reviews (results in ``runDir/review``).

        Raises:
            VolumeError: the segment is empty on the CT's grid (checked before the CT is exported).
        """
        segmentPath = None
        if segmentation is not None and segmentId:
            name = "segment.nrrd" if review else "mask.nrrd"
            segmentPath = export_segment_mask(segmentation, segmentId, params.inputVolume, runDir / name)
        inputPath = export_volume(params.inputVolume, runDir / "input.nrrd")
        if review:
            return RunRequest(
                inputPath, runDir / "review", model, params.device, params.mode, review_path=segmentPath
            )
        return RunRequest(inputPath, runDir / "results", model, params.device, params.mode, segmentPath)


class AnomalyScoutWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel. Lifecycle as in Slicer's scripted-module template: the parameter node is observed only
    while the module is shown, and a closed scene (which removes the parameter node) gets a new one."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run: WorkerRun | None = None
        self._batch: BatchScoring | None = None
        self._worklist: Worklist | None = None
        self._worklistRoot: Path | None = None
        self._runInput = None  # the volume being scored: the selector may change while the worker runs
        self._runFolder: Path | None = None
        self._runFolders: RunFolders | None = None
        self._liveNodes = None
        self._resultNodes = None
        self._heatmap = None  # the heatmap shown last, a run's or a review's: the threshold slider's
        self._heatmaps: Heatmaps | None = None  # the results it belongs to: the heatmap selector's choice
        self._heatmapInput = None  # their CT, shown behind them
        self._plotConnected = False
        self._review: WorkerRun | None = None
        self._reviewInput = None  # the CT being reviewed
        self._reviewSegment: tuple = (None, "")  # its segmentation and segment ID: the selector may change
        self._reviewRows: tuple[ReviewRow, ...] = ()

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AnomalyScout.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = AnomalyScoutLogic()
        self.scene = SceneResults(slicer.mrmlScene)
        self._runFolders = RunFolders(slicer.app.temporaryPath)
        self.ui.progressBar.hide()
        self._fillModels()
        for kind in KINDS:
            self.ui.heatmapSelector.addItem(kind.label, kind.key)
        self.ui.deviceNoteLabel.text = "auto picks the GPU when one is found, else the CPU."
        missing = install_plan()  # a look-up only: importing torch here would slow Slicer's start
        if not missing.empty:
            self.ui.statusLabel.text = "Some Python packages are missing; Run will offer to install them."
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.addModelButton.connect("clicked(bool)", self.onAddModel)
        self.ui.opacitySlider.connect("valueChanged(double)", self.scene.set_opacity)
        self.ui.thresholdSlider.connect("valueChanged(double)", self.onThreshold)
        self.ui.heatmapSelector.connect("currentIndexChanged(int)", self.onHeatmapChosen)
        self.ui.flaggedSlicesTable.connect("cellClicked(int,int)", self.onFlaggedRowClicked)
        self.ui.scoreFolderButton.connect("clicked(bool)", self.onScoreFolder)
        self.ui.openWorklistButton.connect("clicked(bool)", self.onOpenWorklist)
        self.ui.loadNextCaseButton.connect("clicked(bool)", self.onLoadNextCase)
        self.ui.reviewButton.connect("clicked(bool)", self.onReview)
        self.ui.reviewTable.connect("cellClicked(int,int)", self.onReviewRowClicked)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the module is reloaded or Slicer exits: no worker and no run folder may outlive it."""
        self._cancelJobs()
        self._runFolders.clear()
        self.removeObservers()

    def enter(self) -> None:
        """The module is shown: make sure a parameter node exists and is observed."""
        self.initializeParameterNode()

    def exit(self) -> None:
        """Another module is shown: stop reacting to the parameter node (a run in progress goes on)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateApply)

    def onSceneStartClose(self, *_) -> None:
        """The scene closes: its parameter node and every node of a run go away, so the run goes too."""
        self._cancelJobs()
        self.setParameterNode(None)
        self._liveNodes = self._resultNodes = self._heatmap = self._heatmaps = self._heatmapInput = None
        self.ui.heatmapSelector.enabled = False
        self._showReview(())
        self._runFolders.clear()

    def onSceneEndClose(self, *_) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume:
                self._parameterNode.inputVolume = firstVolume

    def _cancelJobs(self) -> None:
        """Never leave a worker running behind a closed scene or a removed module."""
        for job in (self._run, self._batch, self._review):
            if job is not None:
                job.cancel()

    def setParameterNode(self, parameterNode: AnomalyScoutParameterNode | None) -> None:
        event = vtk.vtkCommand.ModifiedEvent
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            if self.hasObserver(self._parameterNode, event, self._updateApply):  # exit() may have removed it
                self.removeObserver(self._parameterNode, event, self._updateApply)
        self._parameterNode = parameterNode
        self._parameterNodeGuiTag = None
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, event, self._updateApply)
        self._updateApply()

    def _updateApply(self, *_) -> None:
        running = self._run is not None and self._run.running
        self.ui.applyButton.text = "Cancel" if running else "Run"
        ready = bool(self._parameterNode and self._parameterNode.inputVolume and self._modelPath())
        self.ui.applyButton.enabled = running or ready

    def _fillModels(self, select: str | None = None) -> None:
        self.ui.modelSelector.clear()
        for path in self.logic.modelFiles():
            self.ui.modelSelector.addItem(path.stem, str(path))
        if select:
            self.ui.modelSelector.setCurrentIndex(self.ui.modelSelector.findData(select))

    def _modelPath(self) -> Path | None:
        data = self.ui.modelSelector.currentData
        return Path(data) if data else None

    def onAddModel(self) -> None:
        path = qt.QFileDialog.getOpenFileName(None, "AnomalyScout model", "", "Model files (*.safetensors)")
        if path and not is_model_file(Path(path)):
            self._setStatus(f"{Path(path).name} is not an AnomalyScout model file: not added.")
        elif path:
            self.logic.rememberModelFile(path)
            self._fillModels(select=path)
            self._updateApply()

    # --- one run ---

    def _reviewing(self) -> bool:
        """Whether a review's worker is running: no score run or batch starts beside it (one worker at a
        time, so two models never share the memory of one GPU)."""
        return self._review is not None and self._review.running

    def onApply(self) -> None:
        if self._run is not None and self._run.running:
            self._setStatus("Cancelling…")
            self._run.cancel()
            return
        if self._reviewing():
            self._setStatus("A review is in progress: run when it has finished.")
            return
        with slicer.util.tryWithErrorDisplay("AnomalyScout could not start.", waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            params = self._parameterNode
            self.ui.deviceNoteLabel.text = device_advice(
                params.device, params.mode, None if params.device == "cpu" else cuda_memory_bytes()
            )
            segments = self.ui.segmentSelector
            callbacks = RunCallbacks(
                started=self._onStarted,
                progress=self._onProgress,
                warning=lambda message: self._setStatus(f"Warning: {message}"),
                log=self._log,
                finished=self._onFinished,
            )
            run = self._newWorkerRun(
                lambda runDir: self.logic.prepareRun(
                    params, self._modelPath(), segments.currentNode(), segments.currentSegmentID(), runDir
                ),
                callbacks,
            )
            self._run, self._runFolder, self._runInput = run, run.request.out_dir.parent, params.inputVolume
            self._liveNodes = self.scene.start_live_scores(self._runInput)
            self.scene.show_chart(self._liveNodes.chart, slicer.modules.plots.logic())
            self._connectPlotView()
            self.ui.logText.clear()
            self._run.start()
            self._setStatus("Starting the worker (loading the model)…")
            self.ui.progressBar.show()
            self._updateApply()

    def _newWorkerRun(self, prepare: Callable[[Path], RunRequest], callbacks: RunCallbacks) -> WorkerRun:
        """A worker run (not started yet) whose inputs ``prepare`` exports into a new run folder, which goes
        again if that fails."""
        runFolder = self._runFolders.create()
        try:
            return WorkerRun(prepare(runFolder), slicer_launcher, callbacks)
        except Exception:
            self._runFolders.discard(runFolder)
            raise

    @staticmethod
    def _removeExports(request: RunRequest) -> None:
        """The copies of the CT and the segment made for the worker, no longer needed once it has exited."""
        for path in (request.input_path, request.mask_path, request.review_path):
            if path is not None:
                Path(path).unlink(missing_ok=True)

    def _onStarted(self, slices: int, device: str, mode: str) -> None:
        self.ui.progressBar.maximum = slices
        if self._parameterNode and self._parameterNode.device != "cpu" and device == "cpu":
            self.ui.deviceNoteLabel.text = "No GPU was found: running on the CPU (slower)."
        self._setStatus(f"Scoring {slices} slices on {device} ({mode})…")

    def _onProgress(self, i, n, sliceIndex, position, score, eta) -> None:
        self.ui.progressBar.value = i
        self.ui.progressBar.format = f"slice {i}/{n}" + (
            f", {format_eta(eta)} left" if eta is not None else ""
        )
        if score is not None and self._liveNodes is not None and self.scene.contains(self._runInput):
            self.scene.add_live_score(self._liveNodes, sliceIndex, position, score)

    def _onFinished(self, outcome: RunOutcome) -> None:
        """Show what the worker left, unless the input has gone with a closed scene meanwhile."""
        self.ui.progressBar.hide()
        inputVolume, runFolder = self._runInput, self._runFolder
        self._removeExports(self._run.request)
        self._setStatus(_withElapsed(outcome.message, outcome))
        shown = False
        if self.scene.contains(inputVolume):
            with slicer.util.tryWithErrorDisplay("The results could not be shown."):
                if outcome.status == "done":
                    self._showResults(inputVolume, self._run.request.out_dir)
                    self._runFolders.keep(inputVolume.GetID(), runFolder)
                    shown = True
                else:
                    self.scene.restore_scores(inputVolume)
        if not shown:
            self._runFolders.discard(runFolder)
        self._updateApply()

    def _showResults(self, inputVolume, outDir: Path) -> None:
        params = self._parameterNode
        nodes = self.scene.show_results(
            inputVolume,
            outDir,
            with_reconstruction=bool(params and params.showReconstruction),
            opacity=params.opacity if params else 0.6,
        )
        self._showHeatmapControls(inputVolume, nodes.heatmaps)
        self.scene.show_chart(nodes.chart, slicer.modules.plots.logic())
        self._showFlagged(nodes.flagged_table)
        report = nodes.report
        percentile = (
            "" if math.isnan(report.case_percentile) else f", percentile {report.case_percentile:.1f}"
        )
        verdict = "flagged" if report.case_flagged else "not flagged"
        self.ui.caseScoreLabel.text = (
            f"Case score {report.case_score:.3g}{percentile} ({verdict}); "
            f"{len(report.flagged_slices)} flagged slice(s); model {report.model_id}, {report.mode} mode."
        )
        self._resultNodes = nodes

    def _showHeatmapControls(self, inputVolume, heatmaps: Heatmaps) -> None:
        """Point the selector and the threshold slider at new results, shown over ``inputVolume`` with their
        default heatmap (the anomaly map when there is one). The selector offers a choice only when the
        results hold both heatmaps."""
        self._heatmaps, self._heatmapInput = heatmaps, inputVolume
        self._pointThresholdSlider(heatmaps.default)
        selector = self.ui.heatmapSelector
        selector.enabled = heatmaps.choosable
        selector.setCurrentIndex(selector.findData(heatmaps.default_kind.key))  # its signal shows the same

    def _pointThresholdSlider(self, heatmap) -> None:
        """The slider now moves ``heatmap`` (the one shown), over its range, starting at its threshold.

        The threshold is read first: a smaller maximum clamps the slider's value and ctkSliderWidget emits
        ``valueChanged`` for it, which would otherwise overwrite ``heatmap``'s threshold before it is read.
        """
        threshold = heatmap.GetDisplayNode().GetLowerThreshold()
        self._heatmap = heatmap
        self.ui.thresholdSlider.maximum = self.scene.heatmap_top(heatmap)
        self.ui.thresholdSlider.value = threshold

    def onHeatmapChosen(self, _index: int) -> None:
        """Show the chosen heatmap of the last results instead of the other one; each keeps its threshold."""
        heatmaps, volume = self._heatmaps, self._heatmapInput
        if heatmaps is None or not self.scene.contains(volume):
            return
        kind = kind_named(self.ui.heatmapSelector.currentData)
        if not self.scene.contains(heatmaps.node(kind)):  # not offered: the selector is disabled then
            return
        params = self._parameterNode
        shown = self.scene.show_heatmap(volume, heatmaps, kind, params.opacity if params else 0.6)
        self._pointThresholdSlider(shown)

    def _showFlagged(self, table) -> None:
        vtkTable = table.GetTable()
        formats = (("slice_index", "{:.0f}"), ("score", "{:.3g}"), ("percentile", "{:.1f}"))
        rows = []
        for row in range(vtkTable.GetNumberOfRows()):
            values = [vtkTable.GetColumnByName(name).GetValue(row) for name, _ in formats]
            rows.append(["" if math.isnan(v) else fmt.format(v) for v, (_, fmt) in zip(values, formats)])
        _fillTable(self.ui.flaggedSlicesTable, rows)

    def onFlaggedRowClicked(self, row: int, _column: int) -> None:
        if self._resultNodes is not None:
            self.scene.jump_to_slice(self.scene.center_of_row(self._resultNodes.flagged_table, row))

    def _connectPlotView(self) -> None:
        plotWidget = slicer.app.layoutManager().plotWidget(0)
        if plotWidget is not None and not self._plotConnected:
            plotWidget.plotView().connect(
                "dataSelected(vtkStringArray*, vtkCollection*)", self.onPlotSelection
            )
            self._plotConnected = True

    def onPlotSelection(self, seriesIds, selections) -> None:
        """A click on a plot point: jump to the first selected slice (once its position is known)."""
        for i in range(seriesIds.GetNumberOfValues()):
            points = selections.GetItemAsObject(i)
            if points is not None and points.GetNumberOfTuples() > 0:
                center = self.scene.center_of_plot_point(seriesIds.GetValue(i), int(points.GetValue(0)))
                if not self.scene.jump_to_slice(center):
                    self._setStatus("Slice positions are known when the run has finished.")
                return

    def onThreshold(self, value: float) -> None:
        if self.scene.contains(self._heatmap):
            self.scene.set_threshold(self._heatmap, value)

    def _setStatus(self, text: str) -> None:
        self.ui.statusLabel.text = text
        self._log(text)
        slicer.util.showStatusMessage(text, 5000)

    def _log(self, text: str) -> None:
        """The panel's log area (what TotalSegmentator and MONAIAuto3DSeg show) and Slicer's log."""
        self.ui.logText.appendPlainText(text)
        logging.info(f"AnomalyScout: {text}")

    # --- worklist ---

    def onScoreFolder(self) -> None:
        if self._batch is not None:
            self._batch.cancel()
            self._batch = None
            self.ui.scoreFolderButton.text = "Score folder"
            self.ui.worklistStatusLabel.text = "Batch cancelled."
            return
        if self._reviewing():
            self.ui.worklistStatusLabel.text = "A review is in progress: score when it has finished."
            return
        with slicer.util.tryWithErrorDisplay("The folder could not be scored.", waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            folder = Path(self.ui.casesFolderButton.directory)
            self._worklistRoot = folder / RESULTS_SUBFOLDER
            progress = BatchProgress(
                case_started=lambda i, n, case: setattr(
                    self.ui.worklistStatusLabel, "text", f"Scoring case {i}/{n}: {case.name}…"
                ),
                case_finished=self._onBatchCase,
                finished=self._onBatchFinished,
            )
            params = self._parameterNode
            self._batch = BatchScoring(
                find_cases(folder),
                self._worklistRoot,
                slicer_launcher,
                progress,
                model_path=self._modelPath(),
                device=params.device,
                mode=params.mode,
            )
            self._batch.start()
            self.ui.scoreFolderButton.text = "Cancel scoring"

    def _onBatchCase(self, case: Path, outcome: RunOutcome) -> None:
        if outcome.status == "failed":
            self._log(f"{case.name} skipped: {outcome.message}")

    def _onBatchFinished(self, entries) -> None:
        self._batch = None
        self.ui.scoreFolderButton.text = "Score folder"
        self._showWorklist(Worklist(entries))

    def onOpenWorklist(self) -> None:
        path = qt.QFileDialog.getOpenFileName(None, "Worklist", "", "Worklist (*.csv)")
        if path:
            with slicer.util.tryWithErrorDisplay("The worklist could not be read."):
                self._worklistRoot = Path(path).parent
                self._showWorklist(Worklist(read_worklist(path)))

    def _showWorklist(self, worklist: Worklist) -> None:
        self._worklist = worklist
        _fillTable(
            self.ui.worklistTable,
            [
                (
                    Path(entry.case).name,
                    f"{entry.score:.3g}",
                    "" if math.isnan(entry.percentile) else f"{entry.percentile:.1f}",
                    entry.reason,
                )
                for entry in worklist.entries
            ],
        )
        self.ui.worklistStatusLabel.text = f"{len(worklist.entries)} cases, most urgent first."
        self.ui.loadNextCaseButton.enabled = bool(worklist.entries)

    def onLoadNextCase(self) -> None:
        """Open the next case: its batch results at its hottest slices, or score it now if it has none."""
        entry = self._worklist.next_entry()
        if entry is None:
            self.ui.worklistStatusLabel.text = "All cases of the worklist were opened."
            return
        name = Path(entry.case).name
        with slicer.util.tryWithErrorDisplay(f"{name} could not be opened.", waitCursor=True):
            volume = load_case(entry.case, slicer.mrmlScene, slicer.util.loadVolume)
            self._parameterNode.inputVolume = volume
            self.ui.worklistTable.selectRow(self._worklist.current_row)
            results = results_dir(self._worklistRoot, entry.case)
            if not (results / "scores.json").is_file():
                if (self._run is not None and self._run.running) or self._reviewing():  # no Apply now
                    self.ui.worklistStatusLabel.text = f"{name} has no results yet: press Run when free."
                    return
                self.ui.worklistStatusLabel.text = f"{name}: {entry.reason} (scoring it now)"
                self.onApply()
                return
            self._showResults(volume, results)
            if entry.extra.get("slice_start"):
                start = int(entry.extra["slice_start"])
                self.scene.jump_to_slice(self.scene.center_of_slice(self._resultNodes.table, start))
            self.ui.worklistStatusLabel.text = f"{name}: {entry.reason}"

    # --- segmentation review ---

    def onReview(self) -> None:
        """Review the chosen segment of the CT in the worker, or cancel the review in progress.

        Bad input (no CT, segmentation, segment or model; a segment empty on the CT's grid) is one line in
        the section's status and launches nothing; a segmentation on another grid is resampled onto the CT's
        by the export.
        """
        if self._review is not None and self._review.running:
            self._setReviewStatus("Cancelling the review…")
            self._review.cancel()
            return
        params = self._parameterNode
        volume = params.inputVolume if params else None
        segments = self.ui.reviewSegmentSelector
        segmentation, segmentId = segments.currentNode(), segments.currentSegmentID()
        model = self._modelPath()
        try:
            check_review_inputs(volume, segmentation, segmentId, model)
        except AnomalyScoutError as error:
            self._setReviewStatus(str(error))
            return
        if self._run is not None and self._run.running:
            self._setReviewStatus("A scoring run is in progress: review when it has finished.")
            return
        if self._batch is not None:
            self._setReviewStatus("A folder is being scored: review when it has finished.")
            return
        with slicer.util.tryWithErrorDisplay("The review could not start.", waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            callbacks = RunCallbacks(
                started=lambda slices, device, mode: self._setReviewStatus(
                    f"Reviewing: scoring {slices} slices on {device} ({mode})…"
                ),
                progress=self._onReviewProgress,
                warning=lambda message: self._log(f"Warning: {message}"),
                log=self._log,
                finished=self._onReviewFinished,
            )
            try:
                run = self._newWorkerRun(
                    lambda runDir: self.logic.prepareRun(
                        params, model, segmentation, segmentId, runDir, review=True
                    ),
                    callbacks,
                )
            except AnomalyScoutError as error:  # the segment is empty on the CT's grid
                self._setReviewStatus(str(error))
                return
            self._review, self._reviewInput, self._reviewSegment = run, volume, (segmentation, segmentId)
            self._showReview(())
            run.start()
            self.ui.reviewButton.text = "Cancel review"
            self._setReviewStatus("Starting the review (loading the model)…")

    def _onReviewProgress(self, i, n, _sliceIndex, _position, _score, eta) -> None:
        left = f", {format_eta(eta)} left" if eta is not None else ""
        self.ui.reviewStatusLabel.text = f"Reviewing: slice {i}/{n}{left}"

    def _onReviewFinished(self, outcome: RunOutcome) -> None:
        """List the slices at risk and show the review's heatmap over the CT with the segment's outline, as a
        score run's results are shown, unless the CT has gone with a closed scene meanwhile."""
        request, volume = self._review.request, self._reviewInput
        segmentation, segmentId = self._reviewSegment
        self._removeExports(request)
        self.ui.reviewButton.text = "Review segmentation"
        message = outcome.message
        if outcome.status == "done" and self.scene.contains(volume):
            params = self._parameterNode
            try:
                rows = read_review(request.out_dir)
                heatmaps = self.scene.show_review(
                    volume,
                    request.out_dir,
                    segmentation if self.scene.contains(segmentation) else None,
                    segmentId,
                    opacity=params.opacity if params else 0.6,
                )
            except AnomalyScoutError as error:
                message = f"Failed: {error}"
            else:
                self._showReview(rows)
                self._showHeatmapControls(volume, heatmaps)
                self._runFolders.keep(f"review:{volume.GetID()}", request.out_dir.parent)
                self._setReviewStatus(_withElapsed(review_summary(rows), outcome))
                return
        self._runFolders.discard(request.out_dir.parent)
        self._setReviewStatus(_withElapsed(message, outcome))

    def _showReview(self, rows: Sequence[ReviewRow]) -> None:
        self._reviewRows = tuple(rows)
        _fillTable(self.ui.reviewTable, [row.cells() for row in rows])

    def onReviewRowClicked(self, row: int, _column: int) -> None:
        """Move every slice view to the clicked slice (the same jump as the flagged-slice list)."""
        if 0 <= row < len(self._reviewRows):
            self.scene.jump_to_slice(self._reviewRows[row].center_ras)

    def _setReviewStatus(self, text: str) -> None:
        self.ui.reviewStatusLabel.text = text
        self._log(text)


def _fillTable(widget, rows: Sequence[Sequence[str]]) -> None:
    """Put ``rows`` of texts into a QTableWidget, replacing what it showed."""
    widget.setRowCount(len(rows))
    for row, texts in enumerate(rows):
        for column, text in enumerate(texts):
            widget.setItem(row, column, qt.QTableWidgetItem(text))


def _withElapsed(message: str, outcome: RunOutcome) -> str:
    """A run's status line with the time it took, when known."""
    return message + (f" ({format_eta(outcome.elapsed_s)})" if outcome.elapsed_s is not None else "")


def _as_list(value) -> list[str]:
    """QSettings returns a str for a one-item list and None for nothing."""
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


class AnomalyScoutTest(ScriptedLoadableModuleTest):
    """The whole flow in Slicer on a small phantom, for a score run and for a review of its liver: export,
    worker, results in the scene, jump to a slice. CPU only and nothing downloaded beyond the dependencies
    (the phantom is made on the spot, the model is the shipped one)."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_scores_a_phantom_and_shows_the_results()
        self.setUp()
        self.test_reviews_a_phantoms_liver_and_shows_its_heatmap()

    def test_scores_a_phantom_and_shows_the_results(self) -> None:
        logic = AnomalyScoutLogic()
        # torch and the rest first: in testing mode the confirmation answers OK by itself
        self.assertTrue(logic.ensureDependencies(), "the Python dependencies are not installed")
        models = logic.modelFiles()
        self.assertTrue(models, "no shipped model was found")

        from AnomalyScoutLib.io.volume import write_volume
        from AnomalyScoutLib.phantom import make_phantom

        self.delayDisplay("Making a phantom with a liver tumour")
        folder = RunFolders(slicer.app.temporaryPath).create()
        case = make_phantom(3, shape_xyz=(64, 64, 32), anomalies=("tumour",))
        write_volume(case.volume, folder / "phantom.nrrd")
        volume = slicer.util.loadVolume(str(folder / "phantom.nrrd"))
        before = slicer.util.arrayFromVolume(volume).copy()

        params = logic.getParameterNode()
        params.inputVolume, params.device = volume, "cpu"
        request = logic.prepareRun(params, models[0], None, "", folder)
        outcomes: list[RunOutcome] = []
        WorkerRun(request, blocking_launcher, RunCallbacks(finished=outcomes.append)).start()
        self.assertEqual(outcomes[0].status, "done", outcomes[0].message)

        scene = SceneResults(slicer.mrmlScene)
        nodes = scene.show_results(volume, request.out_dir)
        self.assertEqual(nodes.table.GetNumberOfRows(), before.shape[0])
        self.assertTrue((slicer.util.arrayFromVolume(volume) == before).all(), "the input was modified")
        composite = slicer.app.layoutManager().sliceWidget("Red").sliceLogic().GetSliceCompositeNode()
        # the anomaly map when the shipped model has a head, else the residual
        self.assertEqual(composite.GetForegroundVolumeID(), nodes.heatmaps.default.GetID())
        if nodes.flagged_table.GetNumberOfRows():
            center = scene.center_of_row(nodes.flagged_table, 0)
            scene.jump_to_slice(center)
            red = slicer.app.layoutManager().sliceWidget("Red").sliceLogic()
            self.assertAlmostEqual(red.GetSliceOffset(), center[2], places=3)
        count = slicer.mrmlScene.GetNumberOfNodes()
        scene.show_results(volume, request.out_dir)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count, "showing results again added nodes")
        RunFolders.discard(folder)
        self.delayDisplay("AnomalyScout self-test passed")

    def test_reviews_a_phantoms_liver_and_shows_its_heatmap(self) -> None:
        """The review path as the panel takes it: the liver as a segmentation node, exported onto the CT's
        grid, reviewed by the worker, its risk list read, its heatmap over the CT with the liver outlined."""
        logic = AnomalyScoutLogic()
        self.assertTrue(logic.ensureDependencies(), "the Python dependencies are not installed")
        models = logic.modelFiles()
        self.assertTrue(models, "no shipped model was found")

        import numpy as np

        from AnomalyScoutLib.io.volume import Volume, write_volume
        from AnomalyScoutLib.phantom import make_phantom
        from AnomalyScoutLib.phantom.anatomy import LABEL_NAMES

        self.delayDisplay("Reviewing the liver segmentation of a phantom with a liver tumour")
        folder = RunFolders(slicer.app.temporaryPath).create()
        case = make_phantom(3, shape_xyz=(64, 64, 32), anomalies=("tumour",))
        ct = case.volume
        liver = next(code for code, name in LABEL_NAMES.items() if name == "liver")
        write_volume(ct, folder / "phantom.nrrd")
        labels = Volume((case.labels == liver).astype(np.uint8), ct.spacing_xyz, ct.origin_xyz, ct.direction)
        write_volume(labels, folder / "liver.nrrd")
        volume = slicer.util.loadVolume(str(folder / "phantom.nrrd"))
        labelmap = slicer.util.loadLabelVolume(str(folder / "liver.nrrd"))
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "liver model")
        imported = slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
            labelmap, segmentation
        )
        self.assertTrue(imported, "the liver label map could not be imported as a segmentation")
        slicer.mrmlScene.RemoveNode(labelmap)
        segmentId = segmentation.GetSegmentation().GetNthSegmentID(0)

        params = logic.getParameterNode()
        params.inputVolume, params.device = volume, "cpu"
        request = logic.prepareRun(params, models[0], segmentation, segmentId, folder, review=True)
        outcomes: list[RunOutcome] = []
        WorkerRun(request, blocking_launcher, RunCallbacks(finished=outcomes.append)).start()
        self.assertEqual(outcomes[0].status, "done", outcomes[0].message)

        rows = read_review(request.out_dir)
        self.assertTrue(rows, "the review scored no slice of the liver")
        self.assertEqual(rows[0].risk, max(row.risk for row in rows), "the list is not riskiest first")
        scene = SceneResults(slicer.mrmlScene)
        heatmap = scene.show_review(volume, request.out_dir, segmentation, segmentId).default
        red = slicer.app.layoutManager().sliceWidget("Red").sliceLogic()
        composite = red.GetSliceCompositeNode()
        self.assertEqual(composite.GetBackgroundVolumeID(), volume.GetID())
        self.assertEqual(composite.GetForegroundVolumeID(), heatmap.GetID())
        display = segmentation.GetDisplayNode()
        self.assertTrue(
            display.GetVisibility() and display.GetVisibility2DOutline(), "the liver is not shown"
        )
        scene.jump_to_slice(rows[0].center_ras)
        self.assertAlmostEqual(red.GetSliceOffset(), rows[0].center_ras[2], places=3)
        RunFolders.discard(folder)
        self.delayDisplay("AnomalyScout review self-test passed")
