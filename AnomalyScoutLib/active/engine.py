"""The scoring engine behind ranking's :data:`~AnomalyScoutLib.active.ranking.CaseScorer` type.

:class:`ModelCaseScorer` turns a CT path into :class:`CaseScores` with :class:`~AnomalyScoutLib.engine.
VolumeScorer` (the same reconstruction and scores as ``anomalyscout score``) plus the encoder's latent code of
every slice, which the diversity strategies compare. It holds only the model path and options, so it pickles
cheaply to Dask workers; each process loads the model once (:func:`_volume_scorer` is cached).

Slices are placed and gated as ``anomalyscout score`` does (``position.placement.place_and_gate``, the
``position`` option with ``score``'s default): the generator and the encoder are conditioned on those
positions, the calibration's bins are looked up by them, the case score is taken over the slices in the
model's range, and the slices outside it are never listed (:attr:`CaseScores.in_range`). A case with no
slice in range fails with ``score``'s line (the pool goes on).

Percentiles come from the model's calibration only. The per-case fallback of ``anomalyscout score`` (ranking a
slice against its own case) would make every case look equally anomalous, which is useless for choosing
between cases; without a calibration the percentiles are NaN and ranking uses the raw scores.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
import torch

from AnomalyScoutLib.active.ranking import CaseScores
from AnomalyScoutLib.devices import select_device
from AnomalyScoutLib.engine import VolumeScorer, calibrate_case
from AnomalyScoutLib.inversion import InversionConfig
from AnomalyScoutLib.io.geometry import axial_frame, to_canonical
from AnomalyScoutLib.io.volume import Volume, read_volume
from AnomalyScoutLib.model_file import DEFAULT_MODEL_PATH, AnomalyModel
from AnomalyScoutLib.position.gate import require_in_range
from AnomalyScoutLib.position.placement import place_and_gate, resolve_method
from AnomalyScoutLib.preprocessing import model_grid
from AnomalyScoutLib.scoring import ScoreConfig

__all__ = ["ModelCaseScorer", "model_case_scorer", "score_canonical", "slice_latents"]


@functools.lru_cache(maxsize=2)
def _volume_scorer(model_path: str, device: str, mode: str, batch_size: int) -> VolumeScorer:
    """Load the model once per process (Dask workers call the scorer many times)."""
    torch_device = select_device(device)
    model = AnomalyModel.load(model_path, torch_device)
    return VolumeScorer(model, InversionConfig(mode=mode), ScoreConfig(), torch_device, batch_size=batch_size)


@torch.no_grad()
def slice_latents(
    model: AnomalyModel,
    canonical_hu: np.ndarray,
    spacing_kji: tuple[float, float, float],
    positions: np.ndarray,
    device: torch.device,
    batch_size: int = 16,
) -> np.ndarray:
    """The encoder's code of every canonical slice, averaged over its W+ layers: (n_slices, w_dim).

    The average keeps the coarse, anatomy-level content shared by all layers and gives one vector per slice
    whose Euclidean distances k-center can use.
    """
    grid = model_grid(canonical_hu.shape[1:], spacing_kji[1:], model.resolution)
    codes = []
    for k0 in range(0, len(canonical_hu), batch_size):
        hu = torch.from_numpy(np.array(canonical_hu[k0 : k0 + batch_size], dtype=np.float32))
        x = grid.to_model(model.window.normalize(hu)).to(device)[:, None]
        position = torch.as_tensor(positions[k0 : k0 + batch_size], dtype=torch.float32, device=device)
        codes.append(model.encoder(x, position).mean(dim=1).cpu())
    return torch.cat(codes).numpy()


def score_canonical(
    scorer: VolumeScorer,
    canonical_hu: np.ndarray,
    spacing_kji: tuple[float, float, float],
    position: str = "auto",
) -> CaseScores:
    """Scores, calibrated percentiles (NaN without calibration) and latent codes of a canonical volume.

    Raises:
        VolumeError: no slice lies in the model's range (as ``score``).
        ConfigError: unknown ``position``, or ``"anatomy"`` for a model without a regressor.
    """
    placement, gate = place_and_gate(canonical_hu, spacing_kji, scorer.model.position_regressor, position)
    require_in_range(gate, placement)
    raw = scorer.score(canonical_hu, spacing_kji, positions=placement.positions)
    # the same rules as `score` (atlas, envelope, gate); a case-wise fallback gives no percentile here
    judged = calibrate_case(scorer, raw, gate)
    value = judged.case_score
    if judged.by_model:
        percentiles, case_percentile = judged.calibrated.percentile, judged.calibrated.case_percentile
    else:
        percentiles, case_percentile = np.full(len(raw.scores), math.nan), math.nan
    latents = slice_latents(
        scorer.model,
        canonical_hu,
        spacing_kji,
        raw.positions.astype(np.float32),
        scorer.device,
        scorer.batch_size,
    )
    return CaseScores(
        raw.scores,
        np.asarray(percentiles, dtype=np.float64),
        value,
        float(case_percentile),
        latents,
        gate.in_range,
    )


@dataclass(frozen=True)
class ModelCaseScorer:
    """A picklable per-case scoring function: read the CT, put it in canonical order, score it."""

    model_path: str
    device: str = "auto"
    mode: str = "fast"
    batch_size: int = 16
    #: ``--position``: auto, anatomy or index (``position.placement``).
    position: str = "auto"

    def __call__(self, case: str) -> CaseScores:
        return self.score_volume(read_volume(case))

    def volume_scorer(self) -> VolumeScorer:
        """The loaded engine (once per process)."""
        return _volume_scorer(self.model_path, self.device, self.mode, self.batch_size)

    def score_volume(self, volume: Volume) -> CaseScores:
        """Score a volume already in memory (the benchmark's phantoms); slices in canonical order."""
        frame = axial_frame(volume)
        canonical = to_canonical(volume.array_zyx, frame)
        return score_canonical(self.volume_scorer(), canonical, frame.spacing_kji, self.position)

    def placement(self) -> str:
        """How this scorer places slices for its model: ``"anatomy"`` or ``"index"``."""
        return resolve_method(self.position, self.volume_scorer().model.position_regressor)

    def cache_identity(self) -> str:
        """What cached scores depend on besides the case: the model's weights (its id), the placement and
        the calibration (recalibrating rewrites only metadata, so the model id alone would serve stale
        percentiles)."""
        model = self.volume_scorer().model
        calibration = json.dumps(model.calibration, sort_keys=True).encode()
        digest = hashlib.sha256(calibration).hexdigest()[:16]
        return f"{model.model_id}/position={self.placement()}/calibration={digest}"


def model_case_scorer(
    model: str | None, device: str = "auto", mode: str = "fast", position: str = "auto"
) -> tuple[ModelCaseScorer, str]:
    """The scorer for ``model`` (default: the shipped model) and the model's id.

    The model is loaded here once, so that a missing or invalid model file fails before any case is touched
    (as a :class:`~AnomalyScoutLib.errors.ModelFileError`), and this process's cache is warm for ``--jobs 1``.
    So does a ``position`` the model cannot place by (``"anatomy"`` without a regressor).
    """
    scorer = ModelCaseScorer(str(model or DEFAULT_MODEL_PATH), device, mode, position=position)
    scorer.placement()
    return scorer, scorer.volume_scorer().model.model_id
