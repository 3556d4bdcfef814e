"""Baseline (4): a per-position intensity atlas — how unusual is each pixel for a slice at this position?

The simplest model of "normal anatomy at position p": the mean and standard deviation of every pixel
over the normal training slices near p. It needs no training beyond two passes over the data and sets
the floor a learned model has to beat; it fails where anatomy varies between patients (organ size and
position), which is exactly what a generative model should capture.
"""

from __future__ import annotations

import numpy as np

from benchmarks.aggregation import slice_scores
from benchmarks.detectors import Detection
from benchmarks.slices import SliceSet

__all__ = ["PositionAtlas"]


class PositionAtlas:
    """Per-position-bin mean/std atlas; the anomaly map is the absolute z-score divided by ``z_max``.

    Args:
        bins: Number of position bins over [0, 1]; bin statistics are kernel-weighted over neighbouring
            positions (Gaussian of width ``bandwidth``) so that sparse bins borrow from their neighbours.
        bandwidth: Kernel width in relative position.
        std_floor: Smallest standard deviation (normalised units; 0.05 ≈ 15 HU with the default
            window), so that pixels that are constant in training (air) do not give infinite z-scores.
        z_max: z-score that maps to 1 (MOOD's pixel metrics clip maps to [0, 1]).
    """

    name = "atlas"

    def __init__(self, bins: int = 20, bandwidth: float = 0.04, std_floor: float = 0.05, z_max: float = 10.0):
        if bins < 1:
            raise ValueError(f"bins must be at least 1, got {bins}")
        if bandwidth <= 0 or std_floor <= 0 or z_max <= 0:
            raise ValueError("bandwidth, std_floor and z_max must be positive")
        self.bins = bins
        self.bandwidth = bandwidth
        self.std_floor = std_floor
        self.z_max = z_max
        self.centres = (np.arange(bins) + 0.5) / bins
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    def fit(self, train: SliceSet) -> None:
        """Kernel-weighted mean and standard deviation per bin and pixel."""
        if len(train) == 0:
            raise ValueError("the atlas needs at least one training slice")
        images = train.images.reshape(len(train), -1).astype(np.float64)
        weights = np.exp(-0.5 * ((self.centres[:, None] - train.positions[None, :]) / self.bandwidth) ** 2)
        weights /= weights.sum(axis=1, keepdims=True)
        mean = weights @ images
        var = weights @ images**2 - mean**2
        shape = (self.bins, *train.images.shape[1:])
        self.mean = mean.reshape(shape).astype(np.float32)
        self.std = np.maximum(np.sqrt(np.maximum(var, 0.0)), self.std_floor).reshape(shape).astype(np.float32)

    def detect(self, slices: SliceSet) -> Detection:
        """|z| / z_max against the nearest bin's statistics, 0 outside the body."""
        if self.mean is None or self.std is None:
            raise RuntimeError("fit the atlas before detect")
        nearest = np.clip((slices.positions * self.bins).astype(int), 0, self.bins - 1)
        z = np.abs(slices.images - self.mean[nearest]) / self.std[nearest]
        maps = np.where(slices.body, z / self.z_max, 0.0).astype(np.float32)
        return Detection(maps=maps, slice_scores=slice_scores(maps, slices.body))
