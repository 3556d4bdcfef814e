"""Data preparation shared by every track: volumes -> :class:`~benchmarks.slices.SliceSet` on the model grid.

One function (:func:`volume_slices`) takes any canonical CT volume with its truth masks and applies
exactly the preprocessing the engine applies (``preprocessing.body_mask``, the slice placement of
``position.placement``, ``HUWindow``, ``ModelGrid``), so a method scored here sees what ``anomalyscout score``
would feed it. Slices are placed as ``score`` places them for the model under test (:class:`SlicePlacer`,
the tracks' ``--position``, default ``auto``: by the model's body-part regressor when it holds one, else by
index); every method of a track sees the same positions. The same call (``position.placement.place_and_gate``)
marks the slices the product's range gate would not score (:attr:`SliceSet.out_of_range`); the tracks take
them out of their data with :func:`in_range_only` and say how many (never flagged, never in a metric).
Phantom cases are made with the project's phantom; the real-anatomy cases reuse the phantom's anomaly
inserters on the real CT (:mod:`benchmarks.real_anatomy`). Every case is cached in ``benchmarks/work/``
(git-ignored) by its parameters, so that tracks and reruns share the CPU minutes spent making them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from AnomalyScoutLib.io.geometry import axial_frame, to_canonical
from AnomalyScoutLib.io.volume import read_label_map, read_volume
from AnomalyScoutLib.model_file import AnomalyModel, tensor_digest
from AnomalyScoutLib.phantom import make_phantom
from AnomalyScoutLib.phantom.anatomy import LABEL_NAMES
from AnomalyScoutLib.position.network import PositionRegressor
from AnomalyScoutLib.position.placement import place_and_gate, resolve_method
from AnomalyScoutLib.position.store import regressor_tensors
from AnomalyScoutLib.preprocessing import HUWindow, body_mask, model_grid
from benchmarks.slices import CaseInfo, SliceSet, concatenate

__all__ = [
    "ANOMALY_TYPES",
    "BY_INDEX",
    "LIVER_LABEL",
    "WORK_DIR",
    "PhantomSplit",
    "RangeExclusion",
    "SlicePlacer",
    "in_range_only",
    "phantom_case",
    "phantom_split",
    "volume_file_case",
    "volume_slices",
]

WORK_DIR = Path(__file__).resolve().parent / "work"
ANOMALY_TYPES: tuple[str, ...] = ("tumour", "metal", "ascites", "blob", "deformation")
LIVER_LABEL = next(code for code, name in LABEL_NAMES.items() if name == "liver")
#: Share of a model pixel that must be anomalous for the pixel to count as anomalous. Any overlap counts: a
#: 6 mm lesion covers only a few 3 mm model pixels, and a stricter rule would erase it from the truth.
_TRUTH_FRACTION = 0.0


@dataclass(frozen=True)
class SlicePlacer:
    """How the harness places slices: ``anomalyscout score``'s ``--position`` for the model under test.

    Attributes:
        method: ``"anatomy"`` or ``"index"`` (resolved: :func:`~AnomalyScoutLib.position.placement.
            resolve_method`).
        regressor: the model's body-part regressor (None places by index).
    """

    method: str = "index"
    regressor: PositionRegressor | None = field(default=None, compare=False, repr=False)

    @classmethod
    def for_model(cls, model: AnomalyModel, position: str = "auto") -> SlicePlacer:
        """The placement ``score --position <position>`` uses for ``model``."""
        return cls(resolve_method(position, model.position_regressor), model.position_regressor)

    @property
    def key(self) -> str | None:
        """What cache names must hold besides the data: None by index (the caches made before placement
        existed stay valid), else the regressor's weights."""
        if self.method == "index" or self.regressor is None:
            return None
        return f"anatomy-{tensor_digest(regressor_tensors(self.regressor))[:16]}"

    def data_key(self, parts: list[Any]) -> str:
        """A track's name for its data selection in cache files: ``parts`` as JSON, plus :attr:`key` when
        the slices are not placed by index (so that both placements never share a cached run)."""
        return json.dumps(parts + ([self.key] if self.key else []))

    def place(
        self, canonical_hu: np.ndarray, spacing_kji: tuple[float, float, float]
    ) -> tuple[np.ndarray, np.ndarray]:
        """float32 ``(n,)`` positions of a canonical volume's slices and, per slice, why the range gate would
        not score it (``""``: in range); both from ``place_and_gate``, the one placement of ``score``."""
        placed, gate = place_and_gate(canonical_hu, spacing_kji, self.regressor, self.method)
        return placed.positions.astype(np.float32), gate.reason


#: The historical placement, ``(k + 0.5) / n``: the phantom's own anatomical scale.
BY_INDEX = SlicePlacer()


@dataclass(frozen=True)
class RangeExclusion:
    """What :func:`in_range_only` took out of a slice set: the slices the product would not score.

    Attributes:
        slices: slices before the gate.
        excluded: slices out of the model's range (never flagged by the product, so in no metric here).
        excluded_anomalous: how many of those hold an anomaly (anomalies the product cannot find).
        by_reason: ``{"above" | "below" | "narrow": count}`` of the excluded slices.
        digest: names exactly which slices were excluded (``""`` when none were).
    """

    slices: int
    excluded: int
    excluded_anomalous: int
    by_reason: dict[str, int]
    digest: str

    def key_parts(self) -> list[str]:
        """What a cache name holds for this gate: nothing when no slice was excluded (the caches made before
        the gate keep their names), else which slices were."""
        return [f"gate-{self.digest}"] if self.excluded else []

    def as_dict(self) -> dict[str, Any]:
        return {
            "slices": self.slices,
            "excluded": self.excluded,
            "excluded_anomalous": self.excluded_anomalous,
            "by_reason": dict(self.by_reason),
            "rule": "the product's range gate (position.placement.place_and_gate): out-of-range slices are "
            "never flagged, so they are in no metric",
        }

    def announce(self, what: str, prefix: str) -> None:
        """Print :meth:`line` for a benchmark's log.

        Raises:
            SystemExit: no ``what`` slice is in the model's range (one line: there is nothing to measure).
        """
        print(f"[{prefix}] {self.line(what)}", flush=True)
        if self.excluded == self.slices:
            raise SystemExit(
                f"[{prefix}] no {what} slice lies in the model's range ({self.by_reason}): nothing to measure"
            )

    def line(self, what: str) -> str:
        """One line for the track's log: how many ``what`` slices the gate took out, and why."""
        if not self.excluded:
            return f"range gate: all {self.slices} {what} slices in the model's range"
        reasons = ", ".join(f"{count} {reason}" for reason, count in self.by_reason.items())
        return (
            f"range gate: {self.excluded} of {self.slices} {what} slices out of the model's range "
            f"({reasons}; {self.excluded_anomalous} anomalous): not scored, in no metric"
        )


def in_range_only(slices: SliceSet) -> tuple[SliceSet, RangeExclusion]:
    """The slices the product would score (:attr:`SliceSet.in_range`), and what was taken out."""
    inside = slices.in_range
    out = ~inside
    reasons, counts = np.unique(slices.out_of_range[out], return_counts=True)
    names = [slices.cases[c].name for c in slices.case[out]]
    excluded = json.dumps([[name, int(k)] for name, k in zip(names, slices.slice_index[out])])
    exclusion = RangeExclusion(
        slices=len(slices),
        excluded=int(out.sum()),
        excluded_anomalous=int((slices.labels & out).sum()),
        by_reason={str(r): int(c) for r, c in zip(reasons, counts)},
        digest=hashlib.sha256(excluded.encode()).hexdigest()[:12] if out.any() else "",
    )
    return (slices if inside.all() else slices.subset(inside)), exclusion


def volume_slices(
    canonical_hu: np.ndarray,
    spacing_kji: tuple[float, float, float],
    anomaly: np.ndarray,
    organ: np.ndarray,
    info: CaseInfo,
    resolution: int,
    window: HUWindow,
    placer: SlicePlacer = BY_INDEX,
) -> SliceSet:
    """One canonical volume (k, rows, cols) in HU with its boolean truth masks -> a one-case slice set.

    Images, body and masks are resampled with the engine's :class:`ModelGrid`; a model pixel is anomalous
    when any part of it is (``_TRUTH_FRACTION``), organ pixels when at least half is. Slices are placed and
    gated on the whole volume by ``placer`` (before any subset is taken, as ``score`` places a whole scan).
    """
    if anomaly.shape != canonical_hu.shape or organ.shape != canonical_hu.shape:
        raise ValueError("the masks must have the volume's shape")
    n, rows, cols = canonical_hu.shape
    grid = model_grid((rows, cols), spacing_kji[1:], resolution)
    hu = torch.from_numpy(np.array(canonical_hu, dtype=np.float32))  # a copy: inputs may be read-only
    positions, out_of_range = placer.place(canonical_hu, spacing_kji)

    def resample(mask: np.ndarray, above: float) -> np.ndarray:
        return grid.to_model(torch.from_numpy(mask.astype(np.float32)), fill=0.0).numpy() > above

    return SliceSet(
        images=grid.to_model(window.normalize(hu)).numpy().astype(np.float32),
        positions=positions,
        body=resample(body_mask(canonical_hu), 0.5),
        anomaly=resample(anomaly, _TRUTH_FRACTION),
        organ=resample(organ, 0.5),
        case=np.zeros(n, dtype=np.int64),
        slice_index=np.arange(n, dtype=np.int64),
        cases=(info,),
        out_of_range=out_of_range,
    )


def _cache_path(kind: str, parameters: dict, placer: SlicePlacer) -> Path:
    if placer.key is not None:
        parameters = {**parameters, "position": placer.key}
    digest = hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()[:12]
    return WORK_DIR / kind / f"{parameters.get('name', kind)}-{digest}.npz"


def phantom_case(
    seed: int,
    anomaly: str,
    resolution: int,
    window: HUWindow,
    shape_xyz: Sequence[int] = (256, 256, 100),
    placer: SlicePlacer = BY_INDEX,
) -> SliceSet:
    """One phantom case (``anomaly="normal"`` for a control) as a slice set, cached on disk."""
    parameters = {
        "name": f"{anomaly}-{seed}",
        "seed": seed,
        "anomaly": anomaly,
        "resolution": resolution,
        "window": [window.low, window.high],
        "shape_xyz": list(shape_xyz),
        "version": 2,  # 2: with the range gate (SliceSet.out_of_range)
    }
    path = _cache_path("phantom", parameters, placer)
    if path.is_file():
        return SliceSet.load(path)
    case = make_phantom(seed, shape_xyz=shape_xyz, anomalies=() if anomaly == "normal" else (anomaly,))
    spacing_xyz = case.volume.spacing_xyz
    slices = volume_slices(
        case.volume.array_zyx,  # the phantom is already in canonical order with an identity direction
        (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0]),
        case.anomaly_mask > 0,
        case.labels == LIVER_LABEL,
        CaseInfo(name=f"{anomaly}-{seed}", anomaly=anomaly, seed=seed),
        resolution,
        window,
        placer,
    )
    slices.save(path)
    return slices


def volume_file_case(
    ct_path: str | Path,
    labels_path: str | Path,
    organ_label: int,
    info: CaseInfo,
    resolution: int,
    window: HUWindow,
    placer: SlicePlacer = BY_INDEX,
) -> SliceSet:
    """A normal CT file (any orientation the engine reads) with its label map, as a one-case slice set.

    Used for the real fixture and for phantom volumes another part already wrote to disk (the shipped
    model's training cases), which saves the minutes of making them again.
    """
    parameters = {
        "name": info.name,
        "ct": str(ct_path),
        "labels": str(labels_path),
        "organ": organ_label,
        "resolution": resolution,
        "window": [window.low, window.high],
        "version": 2,  # 2: with the range gate (SliceSet.out_of_range)
    }
    path = _cache_path("files", parameters, placer)
    if path.is_file():
        return SliceSet.load(path)
    volume = read_volume(ct_path)
    frame = axial_frame(volume)
    hu = to_canonical(volume.array_zyx, frame)
    organ = to_canonical(read_label_map(labels_path, volume), frame) == organ_label
    slices = volume_slices(
        hu, frame.spacing_kji, np.zeros(hu.shape, dtype=bool), organ, info, resolution, window, placer
    )
    slices.save(path)
    return slices


class PhantomSplit:
    """Seeds of the phantom track: normal training cases and held-out test cases, disjoint by construction.

    Training seeds are ``train_first .. train_first + n_train - 1`` (by default the first of the seeds the
    shipped model was trained on, 1000-1013, so that the baselines learn from the same normal slices); test
    seeds start at ``test_first`` (far from any training seed the project uses), one block of ``per_type``
    seeds per anomaly type and one for controls.
    """

    def __init__(
        self,
        n_train: int = 8,
        per_type: int = 2,
        n_normal: int = 4,
        train_first: int = 1000,
        test_first: int = 9000,
        types: Iterable[str] = ANOMALY_TYPES,
    ):
        self.types = tuple(types)
        self.train_seeds = tuple(range(train_first, train_first + n_train))
        # Interleaved (one case of every type, then the next...) so that a partial cache is already usable.
        blocks = {kind: test_first + 100 * b for b, kind in enumerate((*self.types, "normal"))}
        self.test_cases: list[tuple[int, str]] = [
            (blocks[kind] + i, kind)
            for i in range(max(per_type, n_normal))
            for kind in (*self.types, "normal")
            if i < (n_normal if kind == "normal" else per_type)
        ]
        overlap = set(self.train_seeds) & {s for s, _ in self.test_cases}
        if overlap:
            raise ValueError(f"training and test seeds overlap: {sorted(overlap)}")

    def as_dict(self) -> dict:
        return {"train_seeds": list(self.train_seeds), "test_cases": [list(c) for c in self.test_cases]}


def phantom_split(
    split: PhantomSplit, resolution: int, window: HUWindow, placer: SlicePlacer = BY_INDEX
) -> tuple[SliceSet, SliceSet]:
    """``(train, test)`` slice sets of a split (cases made or read from the cache one by one)."""
    train = concatenate(
        [phantom_case(s, "normal", resolution, window, placer=placer) for s in split.train_seeds]
    )
    test = concatenate([phantom_case(s, k, resolution, window, placer=placer) for s, k in split.test_cases])
    return train, test
