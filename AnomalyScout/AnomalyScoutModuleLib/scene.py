"""Everything the AnomalyScout module does to the MRML scene, with no Qt.

The widget only forwards clicks here, so this file holds the behaviour that matters to a user (which nodes
exist, how the heatmap looks, where a click on a flagged slice goes) and it can be tested with the ``slicer-
core`` wheel against a real ``vtkMRMLScene`` without the Slicer application.

Result nodes are tagged with two node attributes (role and input node ID) instead of references stored on the
input node: the input volume is never modified, the tags survive saving and reloading the scene, and re-
running on the same input finds and reuses its nodes instead of piling up new ones.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import slicer
import vtk

from AnomalyScoutLib.errors import ResultsError, VolumeError
from AnomalyScoutModuleLib.heatmaps import (
    ANOMALY_MAP,
    HEATMAP_ATTRIBUTE,
    RESIDUAL,
    HeatmapKind,
    Heatmaps,
    kind_named,
)

__all__ = [
    "HEAT_COLOR_TABLE",
    "export_segment_mask",
    "export_volume",
    "show_segment_outline",
    "ResultNodes",
    "SceneResults",
    "ScoreReport",
    "SliceScore",
    "read_score_report",
]

#: A default Slicer colour table (``vtkSlicerColorLogic.AddDefaultColorNodes``), black-red-yellow-white; the
#: display threshold makes low values of the heatmap (anomaly map or residual) transparent so the CT
#: underneath stays readable.
HEAT_COLOR_TABLE = "PET-Heat"
#: Fractions of that table where it is red and where it turns yellow (beyond: pale yellow to white).
HEAT_TABLE_RED, HEAT_TABLE_YELLOW = 0.12, 0.4
ROLE_ATTRIBUTE = "AnomalyScout.Role"
INPUT_ATTRIBUTE = "AnomalyScout.InputNodeID"
RESULTS_DIR_ATTRIBUTE = "AnomalyScout.ResultsDir"
FOLDER_NAME = "AnomalyScout results"
SCORE_COLUMNS = (
    "slice_index",
    "position",
    "score",
    "percentile",
    "flagged",
    "threshold",
    "in_range",
    "beyond_normal_mm2",
)
CENTER_COLUMNS = ("center_r", "center_a", "center_s")


@dataclass(frozen=True)
class SliceScore:
    """One row of ``scores.json``; ``slice_index`` counts canonical axial slices from the most inferior."""

    slice_index: int
    position: float
    score: float
    percentile: float = math.nan
    flagged: bool = False
    threshold: float = math.nan
    center_ras: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    in_range: bool = True
    """False for a slice outside the model's anatomical range: scored but never flagged (docs/position.md)."""
    beyond_normal_mm2: float = 0.0
    """Body area denser than any normal tissue (metal, which the networks' HU window hides): flagged at
    percentile 100 whatever the score (``AnomalyScoutLib/intensity_envelope.py``)."""


@dataclass(frozen=True)
class ScoreReport:
    """The per-case part of ``scores.json`` and its slices, as the module shows them."""

    case_score: float
    case_percentile: float
    case_flagged: bool
    model_id: str
    mode: str
    slices: tuple[SliceScore, ...]

    @property
    def flagged_slices(self) -> tuple[SliceScore, ...]:
        """The flagged slices, most anomalous first (the order a reviewer wants to visit them): by percentile
        (metal's 100 first, whatever its residual score), then by score."""
        flagged = (s for s in self.slices if s.flagged)
        return tuple(sorted(flagged, key=lambda s: (-_or_zero(s.percentile), -s.score)))


def _number(value: object) -> float:
    """``None`` (no calibration in the model) becomes NaN so every column stays numeric."""
    return math.nan if value is None else float(value)


def _or_zero(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def read_score_report(out_dir: str | Path) -> ScoreReport:
    """Read ``scores.json`` from a worker's output folder (the contract in ``docs/design.md``).

    Raises:
        ResultsError: the file is missing, is not JSON or lacks a field the module needs.
    """
    path = Path(out_dir) / "scores.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        slices = tuple(
            SliceScore(
                slice_index=int(row["slice_index"]),
                position=float(row["position"]),
                score=float(row["score"]),
                percentile=_number(row.get("percentile")),
                flagged=bool(row.get("flagged", False)),
                threshold=_number(row.get("threshold")),
                center_ras=tuple(float(c) for c in row["center_ras"]),
                in_range=bool(row.get("in_range", True)),
                # null for a model without an envelope, absent in results written before it
                beyond_normal_mm2=float(row.get("beyond_normal_mm2") or 0.0),
            )
            for row in data["slices"]
        )
        return ScoreReport(
            case_score=float(data["case_score"]),
            case_percentile=_number(data.get("case_percentile")),
            case_flagged=bool(data.get("case_flagged", False)),
            model_id=str(data.get("model_id", "")),
            mode=str(data.get("mode", "")),
            slices=slices,
        )
    except FileNotFoundError as error:
        raise ResultsError(f"no scores.json in {path.parent}: the run did not finish") from error
    except (ValueError, KeyError, TypeError) as error:
        raise ResultsError(f"{path} is not a valid AnomalyScout score file ({error!r})") from error


@dataclass
class ResultNodes:
    """The nodes that show one input's results; ``reconstruction`` is ``None`` until it is asked for, and
    ``anomaly_map`` when the model had no anomaly-map head."""

    residual: slicer.vtkMRMLScalarVolumeNode | None
    reconstruction: slicer.vtkMRMLScalarVolumeNode | None
    table: slicer.vtkMRMLTableNode
    flagged_table: slicer.vtkMRMLTableNode
    chart: slicer.vtkMRMLPlotChartNode
    score_series: slicer.vtkMRMLPlotSeriesNode
    threshold_series: slicer.vtkMRMLPlotSeriesNode
    flagged_series: slicer.vtkMRMLPlotSeriesNode
    report: ScoreReport | None = None
    anomaly_map: slicer.vtkMRMLScalarVolumeNode | None = None

    @property
    def heatmaps(self) -> Heatmaps:
        """The run's heatmaps (the map shown by default when there is one)."""
        return Heatmaps(self.residual, self.anomaly_map)


class SceneResults:
    """Creates, updates and shows AnomalyScout's result nodes in one scene.

    Args:
        scene: the scene to work on (``slicer.mrmlScene`` inside Slicer).
    """

    def __init__(self, scene: slicer.vtkMRMLScene) -> None:
        self.scene = scene

    # --- finding and creating tagged nodes ---

    def _find(self, input_node: slicer.vtkMRMLNode, role: str) -> slicer.vtkMRMLNode | None:
        for node in self._tagged_nodes(input_node):
            if node.GetAttribute(ROLE_ATTRIBUTE) == role:
                return node
        return None

    def _tagged_nodes(self, input_node: slicer.vtkMRMLNode) -> list[slicer.vtkMRMLNode]:
        nodes = self.scene.GetNodes()
        return [
            nodes.GetItemAsObject(i)
            for i in range(nodes.GetNumberOfItems())
            if nodes.GetItemAsObject(i).GetAttribute(INPUT_ATTRIBUTE) == input_node.GetID()
        ]

    def _get_or_create(self, input_node: slicer.vtkMRMLNode, role: str, class_name: str, suffix: str):
        node = self._find(input_node, role)
        if node is None:
            node = self.scene.AddNewNodeByClass(class_name, f"{input_node.GetName()} {suffix}")
            node.SetAttribute(ROLE_ATTRIBUTE, role)
            node.SetAttribute(INPUT_ATTRIBUTE, input_node.GetID())
            self._file_under_input(input_node, node)
        return node

    def _file_under_input(self, input_node: slicer.vtkMRMLNode, node: slicer.vtkMRMLNode) -> None:
        """Put ``node`` in an "AnomalyScout results" folder under the input in the subject hierarchy."""
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
        input_item = _hierarchy_item(hierarchy, input_node)
        folder = hierarchy.GetItemChildWithName(input_item, FOLDER_NAME)
        if not folder:
            folder = hierarchy.CreateFolderItem(input_item, FOLDER_NAME)
        hierarchy.SetItemParent(_hierarchy_item(hierarchy, node), folder)

    def results_for(self, input_node: slicer.vtkMRMLNode) -> ResultNodes | None:
        """The result nodes of ``input_node`` (also after the scene was saved and loaded), or ``None``."""
        table = self._find(input_node, "scores")
        if table is None:
            return None
        return self._nodes(input_node)

    def remove_results(self, input_node: slicer.vtkMRMLNode) -> None:
        """Delete every result node of ``input_node`` and its results folder."""
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
        for node in self._tagged_nodes(input_node):
            self.scene.RemoveNode(node)
        folder = hierarchy.GetItemChildWithName(hierarchy.GetItemByDataNode(input_node), FOLDER_NAME)
        if folder:
            hierarchy.RemoveItem(folder)

    # --- scores: table, plot ---

    def _nodes(self, input_node: slicer.vtkMRMLNode) -> ResultNodes:
        table = self._get_or_create(input_node, "scores", "vtkMRMLTableNode", "slice scores")
        flagged_table = self._get_or_create(input_node, "flagged", "vtkMRMLTableNode", "flagged slices")
        for node in (table, flagged_table):
            for name in SCORE_COLUMNS + CENTER_COLUMNS:  # by name: a table of an older version lacks some
                if node.GetTable().GetColumnByName(name) is None:
                    node.AddColumn(vtk.vtkDoubleArray()).SetName(name)
        chart = self._get_or_create(input_node, "chart", "vtkMRMLPlotChartNode", "anomaly scores")
        chart.SetTitle(f"{input_node.GetName()}: slice anomaly score")
        chart.SetXAxisTitle("slice position (0 inferior, 1 superior)")
        chart.SetYAxisTitle("anomaly score")
        series = {}
        for role, source, y_column, colour, line in (
            ("score_series", table, "score", (0.2, 0.4, 0.8), False),
            ("threshold_series", table, "threshold", (0.9, 0.5, 0.1), True),
            ("flagged_series", flagged_table, "score", (0.85, 0.1, 0.1), False),
        ):
            node = self._get_or_create(input_node, role, "vtkMRMLPlotSeriesNode", role.replace("_", " "))
            node.SetAndObserveTableNodeID(source.GetID())
            node.SetXColumnName("position")
            node.SetYColumnName(y_column)
            node.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            node.SetColor(*colour)
            node.SetLineStyle(node.LineStyleSolid if line else node.LineStyleNone)
            node.SetMarkerStyle(node.MarkerStyleNone if line else node.MarkerStyleCircle)
            if not chart.HasPlotSeriesNodeID(node.GetID()):
                chart.AddAndObservePlotSeriesNodeID(node.GetID())
            series[role] = node
        return ResultNodes(
            residual=self._find(input_node, RESIDUAL.role(review=False)),
            reconstruction=self._find(input_node, "reconstruction"),
            anomaly_map=self._find(input_node, ANOMALY_MAP.role(review=False)),
            table=table,
            flagged_table=flagged_table,
            chart=chart,
            **series,
        )

    def start_live_scores(self, input_node: slicer.vtkMRMLNode) -> ResultNodes:
        """Empty the score tables before a run; the plot then fills as the worker's progress lines arrive."""
        nodes = self._nodes(input_node)
        for table in (nodes.table, nodes.flagged_table):
            table.GetTable().SetNumberOfRows(0)
            table.Modified()
        return nodes

    def restore_scores(self, input_node: slicer.vtkMRMLNode) -> ResultNodes:
        """After a cancelled or failed re-run: the scores of the results still shown, not the partial ones."""
        nodes = self._nodes(input_node)
        shown = nodes.table.GetAttribute(RESULTS_DIR_ATTRIBUTE)
        if shown and (Path(shown) / "scores.json").is_file():
            return self.show_scores(input_node, read_score_report(shown))
        return self.start_live_scores(input_node)

    @staticmethod
    def add_live_score(nodes: ResultNodes, slice_index: int, position: float, score: float) -> None:
        """Append one slice's score from a ``progress`` line (percentile and flag come with the results)."""
        _append_rows(nodes.table, [SliceScore(slice_index, position, score)])

    def show_scores(self, input_node: slicer.vtkMRMLNode, report: ScoreReport) -> ResultNodes:
        """Fill the tables from a finished run: all slices by position, and the flagged ones by score."""
        nodes = self._nodes(input_node)
        for table, rows in (
            (nodes.table, sorted(report.slices, key=lambda s: s.slice_index)),
            (nodes.flagged_table, report.flagged_slices),
        ):
            table.GetTable().SetNumberOfRows(0)
            _append_rows(table, rows)
        outside = sum(not s.in_range for s in report.slices)
        nodes.chart.SetTitle(
            f"{input_node.GetName()}: case score {report.case_score:.3g}"
            + (" (flagged)" if report.case_flagged else "")
            + (f"; {outside} of {len(report.slices)} slices outside the model's range" if outside else "")
        )
        return nodes

    # --- volumes ---

    def _load_volume(self, input_node, role: str, suffix: str, path: Path) -> slicer.vtkMRMLScalarVolumeNode:
        """Read ``path`` into the input's node for ``role`` (reused on re-runs, so views keep showing it)."""
        if not path.is_file():
            raise ResultsError(f"the worker's output {path} is missing")
        node = self._get_or_create(input_node, role, "vtkMRMLScalarVolumeNode", suffix)
        storage = node.GetStorageNode()
        if storage is None:
            storage = self.scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
            node.SetAndObserveStorageNodeID(storage.GetID())
        storage.SetFileName(str(path))
        if not storage.ReadData(node):
            raise ResultsError(f"cannot read {path} as a volume")
        node.SetAndObserveTransformNodeID(
            input_node.GetTransformNodeID()
        )  # same place as the input, if moved
        node.CreateDefaultDisplayNodes()
        return node

    def show_results(
        self,
        input_node: slicer.vtkMRMLScalarVolumeNode,
        out_dir: str | Path,
        *,
        with_reconstruction: bool = False,
        opacity: float = 0.6,
    ) -> ResultNodes:
        """Load a finished run's outputs and show them: heatmap over the CT, score plot, flagged list.

        The heatmap shown is the anomaly map when the run wrote one (its model has a head), else the residual;
        both are loaded, so the other one is a :meth:`show_heatmap` away. Re-running on the same input
        replaces the previous results in the same nodes (and drops a map the new run did not write).

        Raises:
            ResultsError: the folder lacks an output or holds unreadable files.
        """
        out_dir = Path(out_dir)
        report = read_score_report(out_dir)
        heatmaps = self._load_heatmaps(input_node, out_dir, review=False)
        reconstruction = None
        if with_reconstruction:
            reconstruction = self._load_volume(
                input_node, "reconstruction", "pseudo-normal", out_dir / "reconstruction.nrrd"
            )
            _copy_window(input_node, reconstruction)
        elif (stale := self._find(input_node, "reconstruction")) is not None:
            self.scene.RemoveNode(stale)
        nodes = self.show_scores(input_node, report)
        nodes.table.SetAttribute(RESULTS_DIR_ATTRIBUTE, str(out_dir))
        nodes.residual, nodes.anomaly_map = heatmaps.residual, heatmaps.anomaly_map
        nodes.reconstruction, nodes.report = reconstruction, report
        self.show_overlay(input_node, heatmaps.default, opacity)
        return nodes

    def show_review(
        self,
        input_node: slicer.vtkMRMLScalarVolumeNode,
        out_dir: str | Path,
        segmentation: slicer.vtkMRMLSegmentationNode | None = None,
        segment_id: str = "",
        *,
        opacity: float = 0.6,
    ) -> Heatmaps:
        """Show a finished review as a score run's heatmap is shown: CT behind, the review's heatmap over it.

        The heatmaps get their own nodes (roles ``review_anomaly_map`` and ``review_residual``), so a review
        never replaces the heatmaps of a score run of the same CT, and a second review of it reuses the
        nodes. As for a run, the anomaly map is shown when the review wrote one, else the residual. The
        reviewed segment is made visible in the slice views as its outline (the cyan contour of
        ``review.png``): a filled segment would tint the heat inside the organ, which is what the reviewer
        has to read.

        Returns:
            The review's heatmaps (for the selector and the threshold slider).

        Raises:
            ResultsError: the folder lacks ``residual.nrrd`` or a heatmap cannot be read.
        """
        heatmaps = self._load_heatmaps(input_node, Path(out_dir), review=True)
        self.show_overlay(input_node, heatmaps.default, opacity)
        if segmentation is not None:
            show_segment_outline(segmentation, segment_id)
        return heatmaps

    def show_heatmap(
        self,
        input_node: slicer.vtkMRMLScalarVolumeNode,
        heatmaps: Heatmaps,
        kind: HeatmapKind,
        opacity: float = 0.6,
    ) -> slicer.vtkMRMLScalarVolumeNode:
        """Show the heatmap of ``kind`` over the CT instead of the other one (the selector of the panel).

        Each heatmap keeps its own threshold and colours, so switching back shows what was set for it.

        Returns:
            The node now shown (for the threshold slider).

        Raises:
            ResultsError: these results have no heatmap of ``kind`` (a model without a head writes no map).
        """
        node = heatmaps.node(kind)
        if not self.contains(node):
            raise ResultsError(f"these results have no {kind.node_name}: the model has no anomaly-map head")
        self.show_overlay(input_node, node, opacity)
        return node

    def _load_heatmaps(
        self, input_node: slicer.vtkMRMLScalarVolumeNode, out_dir: Path, *, review: bool
    ) -> Heatmaps:
        """Read a run's (or review's) heatmaps: the residual always, the anomaly map when it was written.

        A map node left by earlier results whose model had a head goes, so that it is never shown as this
        run's.
        """
        residual = self._load_heatmap(input_node, RESIDUAL, out_dir, review)
        if (out_dir / ANOMALY_MAP.file_name).is_file():
            return Heatmaps(residual, self._load_heatmap(input_node, ANOMALY_MAP, out_dir, review))
        if (stale := self._find(input_node, ANOMALY_MAP.role(review))) is not None:
            self.scene.RemoveNode(stale)
        return Heatmaps(residual)

    def _load_heatmap(
        self, input_node: slicer.vtkMRMLScalarVolumeNode, kind: HeatmapKind, out_dir: Path, review: bool
    ) -> slicer.vtkMRMLScalarVolumeNode:
        """Read one heatmap file into its node, coloured and thresholded to show."""
        node = self._load_volume(input_node, kind.role(review), kind.name(review), out_dir / kind.file_name)
        node.SetAttribute(HEATMAP_ATTRIBUTE, kind.key)
        self._style_heatmap(node, default_threshold(slicer.util.arrayFromVolume(node), kind.max_tinted_share))
        return node

    def _style_heatmap(self, heatmap: slicer.vtkMRMLScalarVolumeNode, threshold: float) -> None:
        colour = self.scene.GetFirstNodeByName(HEAT_COLOR_TABLE)
        if colour is None:
            colour_logic = slicer.vtkSlicerColorLogic()
            colour_logic.SetMRMLScene(self.scene)
            colour_logic.AddDefaultColorNodes()
            colour = self.scene.GetFirstNodeByName(HEAT_COLOR_TABLE)
        heatmap.GetDisplayNode().SetAndObserveColorNodeID(colour.GetID())
        self.set_threshold(heatmap, threshold)

    @staticmethod
    def heatmap_top(heatmap: slicer.vtkMRMLScalarVolumeNode) -> float:
        """The value a heatmap shows yellow, and the threshold slider's maximum: 1 for the anomaly map (a
        probability: the same colour means the same certainty in every case), the volume's maximum for the
        residual (no fixed scale)."""
        top = kind_named(heatmap.GetAttribute(HEATMAP_ATTRIBUTE)).top
        return float(heatmap.GetImageData().GetScalarRange()[1]) if top is None else top

    @classmethod
    def set_threshold(cls, heatmap: slicer.vtkMRMLScalarVolumeNode, threshold: float) -> None:
        """Hide values below ``threshold`` and spread the visible ones from red to yellow.

        Thresholded voxels are transparent, so only the anomalous regions tint the CT; the window starts at
        the threshold so that the weakest visible value is red, never the table's black, and ends at
        :meth:`heatmap_top`, yellow, never the table's white (both would be hard to see over grey CT). A
        weak anomaly map therefore shows red, a confident one yellow.
        """
        display = heatmap.GetDisplayNode()
        high = max(cls.heatmap_top(heatmap), threshold + 1e-6)
        span = (high - threshold) / (HEAT_TABLE_YELLOW - HEAT_TABLE_RED)
        low = threshold - HEAT_TABLE_RED * span
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(low, low + span)
        display.SetAutoThreshold(False)
        display.SetApplyThreshold(True)
        display.SetThreshold(threshold, float(np.finfo(np.float32).max))

    def show_overlay(
        self, background: slicer.vtkMRMLNode, foreground: slicer.vtkMRMLNode, opacity: float
    ) -> None:
        """CT in the background and the heatmap in the foreground of every slice view, at ``opacity``."""
        for composite in self._nodes_by_class("vtkMRMLSliceCompositeNode"):
            composite.SetBackgroundVolumeID(background.GetID())
            composite.SetForegroundVolumeID(foreground.GetID())
            composite.SetForegroundOpacity(opacity)

    def set_opacity(self, opacity: float) -> None:
        """Foreground opacity of every slice view (the opacity slider)."""
        for composite in self._nodes_by_class("vtkMRMLSliceCompositeNode"):
            composite.SetForegroundOpacity(opacity)

    # --- navigation and layout ---

    def jump_to_slice(self, center_ras: Iterable[float]) -> bool:
        """Move every slice view through a flagged slice's centre (RAS, from ``scores.json``).

        Offsetting keeps each view's in-plane pan and zoom; an axial view lands exactly on the slice. A
        centre that is not known yet (NaN: a plot point of a live run, before ``scores.json`` exists) moves
        nothing, since NaN offsets would leave every view blank.

        Returns:
            Whether the views moved.
        """
        r, a, s = (float(c) for c in center_ras)
        if not all(math.isfinite(c) for c in (r, a, s)):
            return False
        for slice_node in self._nodes_by_class("vtkMRMLSliceNode"):
            slice_node.JumpSliceByOffsetting(r, a, s)
        return True

    def contains(self, node: slicer.vtkMRMLNode | None) -> bool:
        """Whether ``node`` is still in the scene (a closed scene removes it; its ID may be reused)."""
        return node is not None and bool(self.scene.IsNodePresent(node))

    def center_of_row(self, table: slicer.vtkMRMLTableNode, row: int) -> tuple[float, float, float]:
        """The RAS centre stored in a score table row: what a click on a list row or a plot point jumps to."""
        vtk_table = table.GetTable()
        if not 0 <= row < vtk_table.GetNumberOfRows():
            raise IndexError(f"row {row} is outside the table {table.GetName()}")
        return tuple(vtk_table.GetColumnByName(name).GetValue(row) for name in CENTER_COLUMNS)

    def center_of_slice(self, table: slicer.vtkMRMLTableNode, slice_index: int) -> tuple[float, float, float]:
        """The RAS centre of canonical slice ``slice_index`` (a worklist's ``slice_start``)."""
        column = table.GetTable().GetColumnByName("slice_index")
        for row in range(column.GetNumberOfTuples()):
            if int(column.GetValue(row)) == slice_index:
                return self.center_of_row(table, row)
        raise IndexError(f"slice {slice_index} is not in the table {table.GetName()}")

    def center_of_plot_point(self, series_id: str, point: int) -> tuple[float, float, float]:
        """The RAS centre behind a selected plot point (``qMRMLPlotView``'s ``dataSelected`` gives these)."""
        series = self.scene.GetNodeByID(series_id)
        return self.center_of_row(series.GetTableNode(), point)

    def show_chart(self, chart: slicer.vtkMRMLPlotChartNode, plots_logic: slicer.vtkSlicerPlotsLogic) -> None:
        """Switch to a layout with a plot view and show ``chart`` there (Plots module logic)."""
        plots_logic.ShowChartInLayout(chart)
        for view in self._nodes_by_class("vtkMRMLPlotViewNode"):
            view.SetPlotChartNodeID(chart.GetID())

    def _nodes_by_class(self, class_name: str) -> list[slicer.vtkMRMLNode]:
        return [
            self.scene.GetNthNodeByClass(i, class_name)
            for i in range(self.scene.GetNumberOfNodesByClass(class_name))
        ]


def export_volume(volume_node: slicer.vtkMRMLVolumeNode, path: str | Path) -> Path:
    """Write a volume to ``path`` (NRRD) for the worker, leaving the node and its storage node untouched.

    A storage node outside the scene does the writing, so the input's own file name and "modified" state stay
    as the user left them; the worker then scores exactly the voxels and grid Slicer shows.

    Raises:
        VolumeError: the node holds no image or the file cannot be written.
    """
    path = Path(path)
    if volume_node.GetImageData() is None:
        raise VolumeError(f"the volume {volume_node.GetName()!r} holds no image data")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)
    if not storage.WriteData(volume_node):
        raise VolumeError(f"cannot write {volume_node.GetName()!r} to {path}")
    return path


def export_segment_mask(
    segmentation_node: slicer.vtkMRMLSegmentationNode,
    segment_id: str,
    reference: slicer.vtkMRMLScalarVolumeNode,
    path: str | Path,
) -> Path:
    """Write one segment (e.g. the liver) as a label map (1 inside) on the CT's grid: the worker's ``--mask``
    or ``--review``.

    The segment is resampled onto ``reference``'s geometry by Slicer's own export, so a segmentation made on
    another grid (another series, a cropped or resampled label map) lines up with the CT voxel by voxel. A
    segment with no voxel there (empty, or lying outside the CT) is refused here, before any worker starts.

    Raises:
        VolumeError: the segment does not exist, cannot be exported or is empty on the CT's grid.
    """
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise VolumeError(f"the segmentation {segmentation_node.GetName()!r} has no segment {segment_id!r}")
    scene = segmentation_node.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "AnomalyScout mask (temporary)")
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        if not logic.ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap, reference):
            raise VolumeError(
                f"cannot export segment {segment_id!r} onto the grid of {reference.GetName()!r}"
            )
        if labelmap.GetImageData().GetScalarRange()[1] <= 0:
            raise VolumeError(
                f"the segment {segment.GetName()!r} of {segmentation_node.GetName()!r} is empty on the grid "
                f"of {reference.GetName()!r}: nothing to look at"
            )
        return export_volume(labelmap, path)
    finally:
        scene.RemoveNode(labelmap)


def show_segment_outline(segmentation_node: slicer.vtkMRMLSegmentationNode, segment_id: str) -> None:
    """Show the segmentation, and its segment ``segment_id``, as an outline in the slice views.

    The node may have been hidden, or its segment, or be shown filled: the reviewer needs to see where it
    lies on the heatmap without it covering the heat. A segment no longer in the node is skipped.
    """
    segmentation_node.CreateDefaultDisplayNodes()  # only makes one where none exists
    display = segmentation_node.GetDisplayNode()
    display.SetVisibility(True)
    display.SetVisibility2D(True)
    display.SetVisibility2DOutline(True)
    display.SetVisibility2DFill(False)
    if segmentation_node.GetSegmentation().GetSegment(segment_id) is not None:
        display.SetSegmentVisibility(segment_id, True)


def default_threshold(heatmap: np.ndarray, max_tinted_share: float | None = None) -> float:
    """Halfway between the typical body value (median of non-zero voxels) and the strongest one, raised where
    needed so that at most ``max_tinted_share`` of the body lies above it.

    Both heatmaps (residual and anomaly map) are 0 outside the body, hence non-zero voxels only. A fixed share
    of voxels (a quantile) alone would tint normal tissue on every normal scan and swallow a small anomaly in
    ties; halfway to the maximum shows the strongest regions of any scan and leaves the rest of the CT
    readable when the values have a long tail, as the residual's do. The anomaly map's spread wide (a
    probability-like map that saturates in places on normal slices too), where halfway would tint a tenth of
    the body: the cap (its :class:`~AnomalyScoutModuleLib.heatmaps.HeatmapKind`'s) keeps it to the hottest
    regions. A fixed probability such as 0.5 would tint even more of it. The threshold slider adjusts it.
    """
    values = heatmap[heatmap > 0]
    if values.size == 0:
        return 0.0
    threshold = float(0.5 * (np.median(values) + values.max()))
    if max_tinted_share is not None:
        threshold = max(threshold, float(np.quantile(values, 1.0 - max_tinted_share)))
    return threshold


def _hierarchy_item(hierarchy: slicer.vtkMRMLSubjectHierarchyNode, node: slicer.vtkMRMLNode) -> int:
    """The node's subject-hierarchy item; the Slicer application makes one per node, slicer-core does not."""
    return hierarchy.GetItemByDataNode(node) or hierarchy.CreateItem(hierarchy.GetSceneItemID(), node)


def _copy_window(source: slicer.vtkMRMLScalarVolumeNode, target: slicer.vtkMRMLScalarVolumeNode) -> None:
    """Show the pseudo-normal CT with the input's window and level, so the two compare side by side."""
    source_display, target_display = source.GetDisplayNode(), target.GetDisplayNode()
    if source_display is None:
        return
    target_display.SetAutoWindowLevel(False)
    target_display.SetWindowLevel(source_display.GetWindow(), source_display.GetLevel())
    target_display.SetAndObserveColorNodeID(source_display.GetColorNodeID())


def _append_rows(table: slicer.vtkMRMLTableNode, rows: Iterable[SliceScore]) -> None:
    vtk_table = table.GetTable()
    columns = [vtk_table.GetColumnByName(name) for name in SCORE_COLUMNS + CENTER_COLUMNS]
    for row in rows:
        values = (
            row.slice_index,
            row.position,
            row.score,
            row.percentile,
            float(row.flagged),
            row.threshold,
            float(row.in_range),
            row.beyond_normal_mm2,
            *row.center_ras,
        )
        for column, value in zip(columns, values):
            column.InsertNextValue(value)
    vtk_table.Modified()
    table.Modified()
