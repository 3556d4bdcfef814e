"""The two heatmaps a run (or a review) can leave, and what sets them apart when they are shown.

A model with an anomaly-map head (issue 16) makes the worker write ``anomaly_map.nrrd`` beside
``residual.nrrd``: the head's map is then the default heatmap (its top-k is the slice score), and the pixel
residual stays available for comparison. The two are read differently: the map is a probability in [0, 1], so
its colours keep that scale (yellow is 1, whatever the case), while the residual has no fixed scale (HU-window
units) and its colours span the case's own range. Which node is which is a node attribute, so that it
survives saving and reloading the scene.

No Qt and no torch here: the widget and the scene logic both use it, and Slicer imports it at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "ANOMALY_MAP",
    "ANOMALY_MAP_FILE",
    "HEATMAP_ATTRIBUTE",
    "KINDS",
    "RESIDUAL",
    "HeatmapKind",
    "Heatmaps",
    "kind_named",
]

#: ``AnomalyScoutLib.engine.ANOMALY_MAP_FILE``, spelled out because the engine imports torch, which Slicer
#: does not bundle at start-up (``Testing/module/test_module_heatmaps.py`` keeps the two equal).
ANOMALY_MAP_FILE = "anomaly_map.nrrd"
#: Node attribute naming a heatmap node's kind (its ``key``); a node without it (a scene saved before the map
#: existed) is a residual.
HEATMAP_ATTRIBUTE = "AnomalyScout.Heatmap"


@dataclass(frozen=True)
class HeatmapKind:
    """One kind of heatmap: where the worker writes it and how the module names and colours it."""

    key: str
    """The score run's node role; a review's is ``review_`` + key. Also the selector's item data."""
    label: str
    """The selector's text."""
    file_name: str
    node_name: str
    """The node is ``"<CT> <node_name>"`` (a review's ``"<CT> review <node_name>"``)."""
    top: float | None
    """The value coloured yellow and the threshold slider's maximum: fixed for a probability, or ``None`` for
    the volume's own maximum."""
    max_tinted_share: float | None
    """At most this share of the body is tinted by the default threshold (``scene.default_threshold``), or
    ``None`` for no cap."""

    def role(self, review: bool) -> str:
        return f"review_{self.key}" if review else self.key

    def name(self, review: bool) -> str:
        return f"review {self.node_name}" if review else self.node_name


#: The map's values spread wide (the head saturates near 1 on normal slices too, docs/benchmarks.md section
#: 6): halfway between its median and its maximum tinted 11 % of a phantom's body with the issue-16 head, so
#: its default threshold tints at most 1 %. The residual's long tail keeps the halfway rule under that (0.8 %
#: of the same body) and keeps it uncapped, as before the map existed.
ANOMALY_MAP = HeatmapKind(
    "anomaly_map", "Anomaly map", ANOMALY_MAP_FILE, "anomaly map", top=1.0, max_tinted_share=0.01
)
RESIDUAL = HeatmapKind("residual", "Residual", "residual.nrrd", "residual", top=None, max_tinted_share=None)
#: In the selector's order, the default first.
KINDS: tuple[HeatmapKind, ...] = (ANOMALY_MAP, RESIDUAL)


def kind_named(key: str | None) -> HeatmapKind:
    """The kind whose ``key`` this is; anything else (no attribute: an older scene) is the residual."""
    return next((kind for kind in KINDS if kind.key == key), RESIDUAL)


@dataclass(frozen=True)
class Heatmaps:
    """The heatmap nodes of one run or review: always the residual, the anomaly map when the model had a
    head."""

    residual: Any
    anomaly_map: Any = None

    def node(self, kind: HeatmapKind) -> Any:
        """The node of ``kind``, or ``None`` when these results have none."""
        return self.anomaly_map if kind == ANOMALY_MAP else self.residual

    @property
    def default_kind(self) -> HeatmapKind:
        """The map when there is one (the model scores slices with it), else the residual."""
        return ANOMALY_MAP if self.anomaly_map is not None else RESIDUAL

    @property
    def default(self) -> Any:
        """The node shown when the results are loaded."""
        return self.node(self.default_kind)

    @property
    def choosable(self) -> bool:
        """Whether there is a choice to make (the selector is enabled only then)."""
        return self.anomaly_map is not None and self.residual is not None
