"""Our method (and the generator-based baselines) behind the harness's detector protocol.

The engine's own pieces do the work — :class:`~AnomalyScoutLib.inversion.Reconstructor`,
:func:`~AnomalyScoutLib.scoring.residual_maps` and :func:`~AnomalyScoutLib.scoring.score_slices` — on slices
already on the model grid, so the numbers are those of ``anomalyscout score`` without the file I/O. One class
covers three rows of the results: ours (``accurate``), the f-AnoGAN-style encoder-only baseline (``fast``) and
the poster's projector (``projector``, on a conditional or an unconditional model).

Reconstruction (the expensive part) is kept apart from scoring (cheap), so that the score settings (κ, top
fraction, smoothing, Wasserstein vs top-k) can be swept on one set of reconstructions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from AnomalyScoutLib.calibration import Calibration, ModeCalibration
from AnomalyScoutLib.inversion import InversionConfig, Reconstructor
from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.scoring import ScoreConfig, residual_maps, score_slices
from benchmarks.detectors import Detection
from benchmarks.slices import SliceSet

__all__ = ["GeneratorDetector", "Reconstructions"]


@dataclass(frozen=True)
class Reconstructions:
    """Pseudo-normal slices ``(n, res, res)`` and discriminator-feature residuals ``(n,)`` of a set."""

    images: np.ndarray
    feature_residual: np.ndarray


class GeneratorDetector:
    """A trained AnomalyScout model, reconstructing with ``inversion`` and scoring with ``score``.

    Args:
        name: Key of this configuration in the results (``"ours-accurate"``, ``"f-anogan (fast)"``, ...).
        model_path: The ``.safetensors`` model file.
        inversion: Mode, steps, latent space and refinement κ.
        score: Slice score definition (κ of the score, top fraction, smoothing, method).
        batch_size: Slices per reconstruction batch (changes speed, not results: see ``inversion.py``).
    """

    def __init__(
        self,
        name: str,
        model_path: str | Path,
        inversion: InversionConfig,
        score: ScoreConfig,
        batch_size: int = 16,
    ):
        self.name = name
        self.model_path = Path(model_path)
        self.inversion = inversion
        self.score = score
        self.batch_size = batch_size
        self.model = AnomalyModel.load(self.model_path, "cpu")
        self.reconstructor = Reconstructor(
            self.model.generator, self.model.encoder, self.model.discriminator, inversion, torch.device("cpu")
        )

    def fit(self, train: SliceSet) -> None:
        """Nothing to learn: the model file is trained already (on the phantom's normal training seeds)."""

    def check_resolution(self, slices: SliceSet) -> None:
        if slices.images.shape[-1] != self.model.resolution:
            raise ValueError(
                f"{self.name}: slices are {slices.images.shape[-1]} px, the model wants "
                f"{self.model.resolution}"
            )

    def reconstruct(self, slices: SliceSet) -> Reconstructions:
        """Reconstruct every slice, batch by batch (the expensive step)."""
        self.check_resolution(slices)
        images, features = [], []
        for start in range(0, len(slices), self.batch_size):
            part = slice(start, start + self.batch_size)
            result = self.reconstructor.reconstruct(
                torch.from_numpy(slices.images[part]),
                torch.from_numpy(slices.condition[part]),
                torch.from_numpy(slices.body[part]),
            )
            images.append(result.images.numpy())
            features.append(result.feature_residual.numpy())
        return Reconstructions(np.concatenate(images), np.concatenate(features))

    def detection_from(
        self,
        slices: SliceSet,
        reconstructions: Reconstructions,
        score: ScoreConfig | None = None,
        region: np.ndarray | None = None,
    ) -> Detection:
        """Maps and scores from reconstructions with ``score`` (default: this detector's).

        Args:
            region: Optional boolean ``(n, res, res)`` mask (an organ) that restricts maps and scores
                within the body, as the engine's ``--mask`` does.
        """
        score = score or self.score
        x = torch.from_numpy(slices.images)
        recon = torch.from_numpy(reconstructions.images)
        area = slices.body if region is None else slices.body & region
        mask = torch.from_numpy(area)
        residual = residual_maps(x, recon, mask, score.smoothing_px)
        scores = score_slices(
            x, recon, mask, residual, torch.from_numpy(reconstructions.feature_residual), score
        )
        return Detection(maps=residual.numpy(), slice_scores=scores.score.numpy().astype(np.float64))

    def is_calibrated(self) -> bool:
        """Whether the model file holds a calibration made with exactly this inversion and score."""
        return self._calibration() is not None

    def _calibration(self) -> tuple[ModeCalibration, float] | None:
        """The stored calibration the engine would use for this inversion and score (same mode, score
        definition and steps) and the model's default false-positive rate, or ``None``. A model with an
        anomaly-map head has none for this detector: its calibration is of the head's score, which this
        detector (the residual) does not compute (``benchmarks.head_detector`` scores the head)."""
        if self.model.head is not None:
            return None
        stored = Calibration.from_json(self.model.calibration)
        found = stored.for_run(self.inversion.mode, self.score, self.inversion.resolved_steps)
        return None if found is None else (found, stored.default_fpr)

    def calibrated(self, slices: SliceSet, detection: Detection) -> Detection:
        """Slice scores divided by the calibrated threshold at their position (the model's default false-
        positive rate on normal slices): the ranking behind the product's flags (above 1 = flagged), which
        removes the part of a raw score that only says where in the body a slice lies."""
        calibration = self._calibration()
        if calibration is None:
            raise ValueError(f"{self.model_path} has no calibration for {self.inversion} with {self.score}")
        mode_calibration, fpr = calibration
        thresholds = mode_calibration.apply(detection.slice_scores, slices.positions, 0.0, fpr).threshold
        return Detection(maps=detection.maps, slice_scores=detection.slice_scores / thresholds)

    def detect(self, slices: SliceSet) -> Detection:
        return self.detection_from(slices, self.reconstruct(slices))
