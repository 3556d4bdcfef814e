"""The one data structure every track and every method share: slices of several cases on the model grid.

Every method (ours and each baseline) sees exactly the same arrays, so that a difference in the numbers
is a difference in the method and not in the preprocessing. Slices live on the model's in-plane grid
(``res × res``, HU window normalised to [-1, 1]); pixel-level metrics are computed on that grid too
(documented in ``docs/benchmarks.md``), which keeps the harness cheap enough for two shared CPU cores.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from AnomalyScoutLib.atomic import atomic_destination

__all__ = ["CaseInfo", "SliceSet", "concatenate"]

#: dtype of :attr:`SliceSet.out_of_range` (numpy text, so that ``.npz`` files need no pickle).
_REASON = "<U8"


@dataclass(frozen=True)
class CaseInfo:
    """Where one case of a slice set comes from.

    Attributes:
        name: Readable identifier (``"tumour-0107"``), used in plots and the per-case results.
        anomaly: Anomaly type inserted (``"normal"`` for controls).
        seed: Seed that made the case (phantom seed, or insertion seed on real anatomy).
    """

    name: str
    anomaly: str
    seed: int


@dataclass(frozen=True)
class SliceSet:
    """Slices of several cases with their truth, all on one ``res × res`` grid.

    Attributes:
        images: ``(n, res, res)`` float32, HU window normalised to [-1, 1].
        positions: ``(n,)`` float32 slice positions on the model's scale, as the track's placement made them
            (``benchmarks.data.SlicePlacer``: by index, in (0, 1), or by anatomy, which may lie beyond).
        body: ``(n, res, res)`` bool body mask (the region every score is restricted to).
        anomaly: ``(n, res, res)`` bool truth of inserted anomalies (all False in normal cases).
        organ: ``(n, res, res)`` bool liver mask (truth), used by the segmentation-failure track.
        case: ``(n,)`` int index into ``cases``.
        slice_index: ``(n,)`` int canonical slice index k within its case.
        cases: One :class:`CaseInfo` per case.
        out_of_range: ``(n,)`` str, why the product's range gate would not score the slice (``"above"``,
            ``"below"``, ``"narrow"``; ``""`` in range: ``position.gate.apply_range_gate``, as placed by the
            track). Default: every slice in range (sets made by hand, files written before the gate).
    """

    images: np.ndarray
    positions: np.ndarray
    body: np.ndarray
    anomaly: np.ndarray
    organ: np.ndarray
    case: np.ndarray
    slice_index: np.ndarray
    cases: tuple[CaseInfo, ...]
    out_of_range: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 3:
            raise ValueError(f"images must be (n, res, res), got shape {self.images.shape}")
        reasons = np.full(n, "", dtype=_REASON) if self.out_of_range is None else self.out_of_range
        object.__setattr__(self, "out_of_range", np.asarray(reasons, dtype=_REASON))
        for name in ("positions", "body", "anomaly", "organ", "case", "slice_index", "out_of_range"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {n} slices")
        if n and (self.case.min() < 0 or self.case.max() >= len(self.cases)):
            raise ValueError("case indices point outside cases")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def condition(self) -> np.ndarray:
        """``(n,)`` float32 positions the networks are conditioned on: clipped to the trained range [0, 1],
        as the engine does."""
        return np.clip(self.positions, 0.0, 1.0).astype(np.float32)

    @property
    def in_range(self) -> np.ndarray:
        """``(n,)`` bool: the slices the product would score (its range gate let them through)."""
        return self.out_of_range == ""

    @property
    def labels(self) -> np.ndarray:
        """Per-slice truth: a slice is anomalous when any of its pixels is (on the model grid)."""
        return self.anomaly.reshape(len(self), -1).any(axis=1)

    @property
    def case_anomaly(self) -> np.ndarray:
        """``(n,)`` anomaly type of each slice's case (``"normal"`` for controls)."""
        return np.array([self.cases[i].anomaly for i in self.case])

    def subset(self, keep: np.ndarray) -> SliceSet:
        """The slices selected by a boolean mask or index array, with the cases they still use renumbered."""
        keep = np.asarray(keep)
        if keep.dtype == bool:
            keep = np.flatnonzero(keep)
        used = np.unique(self.case[keep])
        renumber = np.full(len(self.cases), -1, dtype=np.int64)
        renumber[used] = np.arange(len(used))
        return SliceSet(
            images=self.images[keep],
            positions=self.positions[keep],
            body=self.body[keep],
            anomaly=self.anomaly[keep],
            organ=self.organ[keep],
            case=renumber[self.case[keep]],
            slice_index=self.slice_index[keep],
            cases=tuple(self.cases[i] for i in used),
            out_of_range=self.out_of_range[keep],
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write to one ``.npz`` atomically (a temporary name in the same folder, then a rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "cases"}
        arrays["cases_json"] = np.array(json.dumps([vars(c) for c in self.cases]))
        with atomic_destination(path, suffix=".npz") as temporary, temporary.open("wb") as stream:
            np.savez_compressed(stream, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SliceSet:
        """Read a set written by :meth:`save` (one written before the range gate has every slice in range)."""
        with np.load(path) as data:
            cases = tuple(CaseInfo(**c) for c in json.loads(str(data["cases_json"])))
            arrays = {f.name: data[f.name] for f in fields(cls) if f.name != "cases" and f.name in data}
            return cls(**arrays, cases=cases)


def concatenate(sets: list[SliceSet]) -> SliceSet:
    """One set holding the slices of several, with case indices shifted so that they stay distinct."""
    if not sets:
        raise ValueError("concatenate needs at least one slice set")
    offsets = np.cumsum([0] + [len(s.cases) for s in sets[:-1]])
    return SliceSet(
        images=np.concatenate([s.images for s in sets]),
        positions=np.concatenate([s.positions for s in sets]),
        body=np.concatenate([s.body for s in sets]),
        anomaly=np.concatenate([s.anomaly for s in sets]),
        organ=np.concatenate([s.organ for s in sets]),
        case=np.concatenate([s.case + off for s, off in zip(sets, offsets)]),
        slice_index=np.concatenate([s.slice_index for s in sets]),
        cases=tuple(c for s in sets for c in s.cases),
        out_of_range=np.concatenate([s.out_of_range for s in sets]),
    )
