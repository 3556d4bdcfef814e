"""Cached reconstructions of a slice set by a generator-based detector, and the runs derived from them.

Reconstruction is the only expensive step of our method (seconds per slice in ``accurate`` mode on a shared
CPU), and every track needs it several times: with the default score, with the score settings of a sweep,
restricted to the liver for the segmentation-failure track. So it is done once per (model file, inversion
settings, slice selection) and kept in ``benchmarks/work/``; the scores are then recomputed for free.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

import numpy as np

from AnomalyScoutLib.atomic import atomic_destination
from AnomalyScoutLib.scoring import ScoreConfig
from benchmarks.data import WORK_DIR
from benchmarks.evaluate import MethodRun
from benchmarks.ours import GeneratorDetector, Reconstructions
from benchmarks.slices import SliceSet

__all__ = ["GeneratorRun", "generator_run"]


@dataclass(frozen=True)
class GeneratorRun:
    """A detector's reconstructions of a slice set and how long they took."""

    detector: GeneratorDetector
    slices: SliceSet
    reconstructions: Reconstructions
    seconds: float

    def method_run(
        self, score: ScoreConfig | None = None, region: np.ndarray | None = None, name: str | None = None
    ) -> MethodRun:
        """Scores and maps with ``score`` (default: the detector's), optionally restricted to ``region``."""
        detection = self.detector.detection_from(self.slices, self.reconstructions, score, region)
        return MethodRun(name or self.detector.name, detection, 0.0, self.seconds)

    def calibrated_run(self) -> MethodRun | None:
        """The detector's scores relative to the model's calibrated thresholds (``None``: not calibrated)."""
        if not self.detector.is_calibrated():
            return None
        detection = self.detector.calibrated(self.slices, self.method_run().detection)
        return MethodRun(f"{self.detector.name}, calibrated", detection, 0.0, self.seconds)


def generator_run(detector: GeneratorDetector, slices: SliceSet, selection_key: str) -> GeneratorRun:
    """Reconstruct ``slices`` with ``detector``, or read the reconstructions from the cache.

    Args:
        selection_key: Identifies the slice selection (the track, its split and sampling), so that two
            different selections never share a cache file.
    """
    parameters = {
        # The weights' digest, not the file's: calibrating a model rewrites its metadata, not what it
        # reconstructs, so its cached reconstructions stay valid.
        "model": detector.model.model_id,
        "inversion": repr(detector.inversion),
        "slices": selection_key,
        "n": len(slices),
        "version": 2,
    }
    key = hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()[:16]
    path = WORK_DIR / "reconstructions" / f"{detector.inversion.mode}-{key}.npz"
    if path.is_file():
        with np.load(path) as data:
            return GeneratorRun(
                detector,
                slices,
                Reconstructions(data["images"], data["feature_residual"]),
                float(data["seconds"]),
            )
    start = time.perf_counter()
    reconstructions = detector.reconstruct(slices)
    seconds = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_destination(path, suffix=".npz") as temporary, temporary.open("wb") as stream:
        np.savez(
            stream,
            images=reconstructions.images,
            feature_residual=reconstructions.feature_residual,
            seconds=seconds,
        )
    return GeneratorRun(detector, slices, reconstructions, seconds)
