"""From scored cases to an annotator's worklist: which cases (or slices) to label next, and why.

The scoring engine is behind one small function type, :data:`CaseScorer` (a path in, :class:`CaseScores`
out), so that ranking, caching and distributed execution are tested with fake scores and the real engine is
plugged in by the ``rank`` command. A worklist is a list of :class:`WorklistItem` (case, slice range, score,
percentile, reason) written as CSV for people and spreadsheets and as JSON for the Slicer module.

Levels:

* ``case``: the items are whole cases. Anomaly signal: the case percentile (the case score if the model has no
  calibration); latent code: the mean of the case's slice codes. The slice range points the annotator at the
  most anomalous run of slices (:func:`hot_range`).
* ``slice``: the items are single slices of all cases; the range is that one slice.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from AnomalyScoutLib.active.strategies import PoolSignals, Selection, select
from AnomalyScoutLib.atomic import write_bytes_atomic
from AnomalyScoutLib.errors import ConfigError

__all__ = [
    "LEVELS",
    "RANK_STRATEGIES",
    "CaseScorer",
    "CaseScores",
    "WorklistItem",
    "build_worklist",
    "hot_range",
    "write_worklist",
]

LEVELS: tuple[str, ...] = ("case", "slice")
#: Strategies that need only the anomaly model (uncertainty and coreset need a segmentation model).
RANK_STRATEGIES: tuple[str, ...] = ("hybrid", "anomaly", "diversity", "random")
CSV_COLUMNS: tuple[str, ...] = ("rank", "case", "slice_start", "slice_end", "score", "percentile", "reason")


@dataclass(frozen=True)
class CaseScores:
    """What ranking needs from scoring one case (slice indices are canonical, 0 = most inferior).

    Attributes:
        slice_scores: (n,) anomaly score per slice.
        slice_percentiles: (n,) percentile of each score among normal slices (0-100; NaN without calibration).
        case_score: the case's score.
        case_percentile: its percentile among normal cases (NaN without calibration).
        latents: (n, d) the encoder's latent code per slice, for the diversity strategies.
        in_range: (n,) bool, the slices the model may judge (``position.gate``, as ``score`` decides); the
            others are never listed and never point the annotator. None: every slice.
    """

    slice_scores: np.ndarray
    slice_percentiles: np.ndarray
    case_score: float
    case_percentile: float
    latents: np.ndarray = field(repr=False)
    in_range: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        n = len(self.slice_scores)
        if (
            n == 0
            or np.shape(self.slice_percentiles) != (n,)
            or np.ndim(self.latents) != 2
            or len(self.latents) != n
        ):
            raise ConfigError(
                f"inconsistent case scores: {n} slice scores, percentiles of shape "
                f"{np.shape(self.slice_percentiles)}, latents of shape "
                f"{np.shape(self.latents)}"
            )
        if self.in_range is not None and (np.shape(self.in_range) != (n,) or not np.any(self.in_range)):
            raise ConfigError(f"in_range must be {n} booleans with at least one slice in range")

    @property
    def judged(self) -> np.ndarray:
        """(n,) bool: the slices in the model's range (all of them when :attr:`in_range` is None)."""
        if self.in_range is None:
            return np.ones(len(self.slice_scores), dtype=bool)
        return np.asarray(self.in_range, dtype=bool)


#: Scores one case given its path (file or DICOM folder); raises an AnomalyScoutError for a bad case.
CaseScorer = Callable[[str], CaseScores]


@dataclass(frozen=True)
class WorklistItem:
    """One line of the worklist: label ``case`` (slices ``slice_start``..``slice_end``, inclusive) next."""

    rank: int
    case: str
    slice_start: int
    slice_end: int
    score: float
    percentile: float
    reason: str


def hot_range(scores: np.ndarray) -> tuple[int, int]:
    """The contiguous run of slices around the highest score that stay above halfway from median to peak.

    A lesion spans several slices; pointing the annotator at the whole run (not only the peak) is what a case
    level worklist is for, and the halfway threshold adapts to each case's own score level.
    """
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    peak = int(np.argmax(scores))
    finite = scores[np.isfinite(scores)]
    threshold = (np.median(finite) + scores[peak]) / 2 if finite.size else np.inf
    start, end = peak, peak
    while start > 0 and scores[start - 1] >= threshold:
        start -= 1
    while end < len(scores) - 1 and scores[end + 1] >= threshold:
        end += 1
    return start, end


def _anomaly_signal(percentiles: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Calibrated percentiles when every item has one, else raw scores (mixing both would be meaningless)."""
    return percentiles if np.isfinite(percentiles).all() else scores


def _reason(strategy: str, gain: float, percentile: float, first: bool) -> str:
    """Why an item is on the worklist, in words, from the strategy and the gain that won it."""
    level = f"{percentile:.0f}th percentile of normal" if math.isfinite(percentile) else "uncalibrated"
    if strategy == "random":
        return "random draw"
    if strategy == "anomaly":
        return f"anomalous: {level}"
    if strategy == "diversity":
        return "diverse: first centre" if first else f"diverse: latent distance {gain:.3g} to the items above"
    if first:
        return f"hybrid: the most anomalous item ({level})"
    return f"hybrid: anomalous ({level}) and unlike the items above (weighted distance {gain:.3g})"


def build_worklist(
    cases: Sequence[tuple[str, CaseScores]],
    strategy: str,
    budget: int,
    *,
    level: str = "case",
    seed: int = 0,
    alpha: float = 1.0,
) -> list[WorklistItem]:
    """Choose ``budget`` cases or slices of the scored ``cases`` with ``strategy``, in the order chosen.

    Raises:
        ConfigError: unknown level or strategy, or a strategy needing signals the anomaly model cannot give.
    """
    if level not in LEVELS:
        raise ConfigError(f"unknown level {level!r}; choose one of {', '.join(LEVELS)}")
    if strategy not in RANK_STRATEGIES:
        raise ConfigError(
            f"strategy {strategy!r} cannot rank a pool from anomaly scores alone; choose one "
            f"of {', '.join(RANK_STRATEGIES)}"
        )
    if not cases:
        return []
    if level == "case":
        items = [
            (name, *hot_range(np.where(s.judged, s.slice_scores, np.nan)), s.case_score, s.case_percentile)
            for name, s in cases
        ]
        latents = np.stack([s.latents[s.judged].mean(axis=0) for _, s in cases])
    else:
        items = [
            (name, k, k, float(s.slice_scores[k]), float(s.slice_percentiles[k]))
            for name, s in cases
            for k in np.flatnonzero(s.judged).tolist()
        ]
        latents = np.concatenate([s.latents[s.judged] for _, s in cases])
    scores = np.array([item[3] for item in items], dtype=np.float64)
    percentiles = np.array([item[4] for item in items], dtype=np.float64)
    signals = PoolSignals(size=len(items), anomaly=_anomaly_signal(percentiles, scores), latents=latents)
    selection: Selection = select(strategy, signals, budget, seed=seed, alpha=alpha)
    return [
        WorklistItem(rank, *items[index], reason=_reason(strategy, gain, items[index][4], rank == 1))
        for rank, (index, gain) in enumerate(zip(selection.indices.tolist(), selection.gains.tolist()), 1)
    ]


def write_worklist(items: Sequence[WorklistItem], csv_path: str, summary: dict[str, Any]) -> str:
    """Write the worklist as CSV at ``csv_path`` and as JSON beside it (``.json``); returns the JSON's path.

    The JSON holds ``summary`` (strategy, model, failed cases, ...) plus ``"items"``. Both files are written
    atomically, the JSON last, so a reader that sees the JSON also sees the matching CSV. An unknown value
    (an uncalibrated percentile) is an empty CSV cell and a JSON null, as in ``scores.csv``/``scores.json``.
    """
    rows = [
        {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in asdict(i).items()}
        for i in items
    ]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    json_path = str(Path(csv_path).with_suffix(".json"))
    write_bytes_atomic(csv_path, text.getvalue().encode())
    document = {**summary, "items": rows}
    write_bytes_atomic(json_path, (json.dumps(document, indent=2, allow_nan=False) + "\n").encode())
    return json_path
