"""What the harness asks of a method (ours or a baseline): fit on normal slices, then map and score.

Keeping every method behind one small protocol is what makes "same harness, same data" true: the tracks
never know which method they run, and the timings of all methods are taken by the same code
(``benchmarks.evaluate``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from benchmarks.slices import SliceSet

__all__ = ["Detection", "Detector"]


@dataclass(frozen=True)
class Detection:
    """A method's output for a slice set.

    Attributes:
        maps: ``(n, res, res)`` float32 anomaly maps, larger = more anomalous, 0 outside the body;
            ``None`` for a method that gives no map (its pixel metrics are then not available). Pixel AP
            clips them to [0, 1] (MOOD's convention), so methods put them on a scale where 1 means
            "certainly abnormal".
        slice_scores: ``(n,)`` one score per slice, larger = more anomalous.
    """

    maps: np.ndarray | None
    slice_scores: np.ndarray


class Detector(Protocol):
    """A method under test. ``name`` is the key of its results in the JSON files and plots."""

    name: str

    def fit(self, train: SliceSet) -> None:
        """Learn normal anatomy from the (normal) training slices; a no-op for a pre-trained model."""

    def detect(self, slices: SliceSet) -> Detection:
        """Anomaly maps and slice scores for ``slices`` (uses images, positions and body masks only)."""
