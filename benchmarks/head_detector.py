"""The anomaly-map head behind the harness's detector protocol, on cached fast-mode reconstructions.

The head reads the slice, the reconstruction of **its own model file's** generator and encoder (fast
mode: what ``anomalyscout score`` would give it) and the position; its map is the head's probability
map and its slice score the top-k mean of the map (the score it would give in the product). Reconstruction
comes from :func:`benchmarks.generator_runs.generator_run`, so it is cached and shared with the fast-mode
residual baseline when the model files hold the same generator.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from AnomalyScoutLib.anomaly_map.head import AnomalyHead
from AnomalyScoutLib.inversion import InversionConfig
from AnomalyScoutLib.scoring import ScoreConfig, top_fraction_mean
from benchmarks.detectors import Detection
from benchmarks.evaluate import MethodRun
from benchmarks.generator_runs import GeneratorRun, generator_run
from benchmarks.ours import GeneratorDetector
from benchmarks.slices import SliceSet

__all__ = ["HeadRun", "head_run"]


class HeadRun:
    """A model file's head applied to the slice set of its reconstructions (fast mode, already made)."""

    def __init__(
        self,
        name: str,
        reconstructions: GeneratorRun,
        batch_size: int = 32,
        head: AnomalyHead | None = None,
    ) -> None:
        self.name = name
        self.reconstructions = reconstructions
        #: The model file's own head, or ``head`` (another head on the same reconstructions: a snapshot).
        self.head = head if head is not None else reconstructions.detector.model.head
        if self.head is None:
            raise ValueError(f"{reconstructions.detector.model_path} holds no anomaly-map head")
        self.batch_size = batch_size
        self._maps: tuple[np.ndarray, float] | None = None

    def maps(self) -> tuple[np.ndarray, float]:
        """The head's maps of every slice and the seconds they took (head only, reconstruction apart);
        computed once, then reused by every score setting."""
        if self._maps is None:
            self._maps = self._compute_maps(self.reconstructions.slices)
        return self._maps

    def _compute_maps(self, slices: SliceSet) -> tuple[np.ndarray, float]:
        images = torch.from_numpy(slices.images)
        recon = torch.from_numpy(self.reconstructions.reconstructions.images)
        positions = torch.from_numpy(slices.condition)
        body = torch.from_numpy(slices.body)
        out = []
        start = time.perf_counter()
        with torch.inference_mode():
            for first in range(0, len(slices), self.batch_size):
                part = slice(first, first + self.batch_size)
                out.append(self.head.anomaly_map(images[part], recon[part], positions[part], body[part]))
        return torch.cat(out).numpy(), time.perf_counter() - start

    def method_run(self, top_fraction: float | None = None, region: np.ndarray | None = None) -> MethodRun:
        """Maps and top-k slice scores (``top_fraction``: the head's own unless given) over the body, or over
        the body within ``region`` (as ``GeneratorRun.method_run``); detection time is the reconstruction's
        plus the head's."""
        maps, seconds = self.maps()
        slices = self.reconstructions.slices
        fraction = self.head.config.top_fraction if top_fraction is None else top_fraction
        area = slices.body if region is None else slices.body & region
        scores = top_fraction_mean(torch.from_numpy(maps), torch.from_numpy(area), fraction).numpy()
        name = self.name if top_fraction is None else f"{self.name}, top {fraction:g}"
        return MethodRun(
            name, Detection(maps, scores.astype(np.float64)), 0.0, self.reconstructions.seconds + seconds
        )


def head_run(
    name: str,
    model_path: Path,
    slices: SliceSet,
    selection_key: str,
    base: GeneratorRun | None = None,
    detector: GeneratorDetector | None = None,
) -> HeadRun:
    """The head of ``model_path`` on ``slices`` (fast-mode reconstructions cached by model and selection).

    Args:
        base: fast-mode reconstructions of the same slices by another model file; reused when that file's
            encoder and generator are the head model's (a head attached to the same model), since the
            head's tensors change the model id that the reconstruction cache is keyed by.
        detector: ``model_path``'s fast-mode detector when the caller has one already (a caller running
            several slice sets loads the file once).
    """
    detector = detector or GeneratorDetector(name, model_path, InversionConfig(mode="fast"), ScoreConfig())
    if base is not None and _same_reconstruction(base.detector, detector):
        return HeadRun(name, GeneratorRun(detector, slices, base.reconstructions, base.seconds))
    return HeadRun(name, generator_run(detector, slices, selection_key))


def _same_reconstruction(a: GeneratorDetector, b: GeneratorDetector) -> bool:
    """Whether two detectors reconstruct identically: same mode and the same encoder and generator weights."""
    if a.inversion != b.inversion:
        return False
    for net_a, net_b in ((a.model.encoder, b.model.encoder), (a.model.generator, b.model.generator)):
        state_a, state_b = net_a.state_dict(), net_b.state_dict()
        if state_a.keys() != state_b.keys() or any(not torch.equal(state_a[k], state_b[k]) for k in state_a):
            return False
    return True
