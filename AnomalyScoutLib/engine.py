"""Scoring a CT volume: reconstruction slice batch by slice batch, scores, calibration and the output folder.

:class:`VolumeScorer` is the streaming core shared by ``anomalyscout score``, the worker, calibration and the
benchmark: it walks the canonical slices in batches, so at most one batch exists at model resolution, and
hands each batch's residual and reconstruction on the input grid to a :class:`BatchSink` (in a run: the output
files, written batch by batch, see :mod:`AnomalyScoutLib.outputs`). The next batch is prepared and the last
one written on helper threads while the networks run. On CUDA, out-of-memory halves the batch and retries.

:func:`score_file` is the whole run behind the score contract of ``docs/design.md``: read and validate the
input, score, calibrate, and write ``residual.nrrd``, ``reconstruction.nrrd``, ``scores.csv``, ``scores.json``
and ``flagged.png`` into a staging folder that replaces the outputs only when everything has succeeded.

The body mask is computed per batch (largest 3-D component *within the batch*): the 3-D labelling of a whole
512x512x600 volume alone would need 2.4 GB.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from AnomalyScoutLib.calibration import (
    ATLAS_CALIBRATION_KEY,
    DENOISER_CALIBRATION_KEY,
    CalibratedScores,
    Calibration,
    ModeCalibration,
    calibration_settings,
    check_fpr,
    combine_opinions,
    placement_mismatch,
    self_calibrated,
)
from AnomalyScoutLib.cancellation import CancelFlag
from AnomalyScoutLib.errors import ConfigError, VolumeError
from AnomalyScoutLib.intensity_envelope import IntensityEnvelope
from AnomalyScoutLib.inversion import DENOISE_MODE, InversionConfig, Reconstruction, Reconstructor
from AnomalyScoutLib.io.geometry import AxialFrame, axial_frame, slice_centers_ras, to_canonical
from AnomalyScoutLib.io.volume import read_label_map, read_volume
from AnomalyScoutLib.montage import (
    ANOMALY_MAP_LABEL,
    MATPLOTLIB_MODULES,
    RESIDUAL_LABEL,
    MontagePanel,
    most_anomalous,
    write_montage,
)
from AnomalyScoutLib.outputs import AtomicOutputDir, NrrdVolumeWriter
from AnomalyScoutLib.position.fit import OPTIMIZER_MODULE, SlicePlacement
from AnomalyScoutLib.position.gate import GateResult, domain_check, require_in_range
from AnomalyScoutLib.position.placement import NO_REGRESSOR_NOTE, PLACEMENT_METHODS, place_and_gate
from AnomalyScoutLib.precision import check_precision
from AnomalyScoutLib.preload import preload_modules
from AnomalyScoutLib.preprocessing import ModelGrid, body_mask, model_grid, slice_positions
from AnomalyScoutLib.scoring import (
    ScoreConfig,
    SliceScores,
    case_score,
    residual_maps,
    score_slices,
    top_fraction_mean,
)

if TYPE_CHECKING:
    from AnomalyScoutLib.model_file import AnomalyModel

__all__ = [
    "ANOMALY_MAP_FILE",
    "OUTPUT_FILES",
    "BatchSink",
    "CaseJudgement",
    "CaseScores",
    "RunListener",
    "ScoreOptions",
    "ScoreRun",
    "VolumeScorer",
    "calibrate_case",
    "canonical_view",
    "metal_slices",
    "score_file",
]

OUTPUT_FILES: tuple[str, ...] = (
    "residual.nrrd",
    "reconstruction.nrrd",
    "scores.csv",
    "scores.json",
    "flagged.png",
)
#: Written beside them when the model holds an anomaly-map head (``AnomalyScoutLib/anomaly_map/``).
ANOMALY_MAP_FILE = "anomaly_map.nrrd"
MONTAGE_SLICES = 8
#: Said once per run for each of a model's opinions that has no calibration (left out of the flags).
UNCALIBRATED_OPINION = (
    "the model's {} has no calibration: its score is left out of the flags (run `anomalyscout calibrate`)"
)
#: What :data:`UNCALIBRATED_OPINION` calls each opinion.
OPINION_NAMES = {ATLAS_CALIBRATION_KEY: "position atlas", DENOISER_CALIBRATION_KEY: "denoiser"}
#: The largest residual the window allows (intensities normalised to [-1, 1]): where metal is drawn.
RESIDUAL_TOP = 2.0


class RunListener(Protocol):
    """What a front end (tqdm on the command line, JSON lines in the worker) hears during a run."""

    def started(self, slices: int, device: str, mode: str, model_id: str) -> None: ...

    def progress(self, i: int, n: int, slice_index: int, score: float, eta_s: float | None) -> None: ...

    def warning(self, message: str) -> None: ...


class _SilentListener:
    def started(self, slices: int, device: str, mode: str, model_id: str) -> None:
        pass

    def progress(self, i: int, n: int, slice_index: int, score: float, eta_s: float | None) -> None:
        pass

    def warning(self, message: str) -> None:
        pass


@dataclass(frozen=True)
class CaseScores:
    """Raw per-slice results of one volume in canonical order.

    ``beyond_mm2`` is each slice's body area above the model's intensity envelope (metal:
    :mod:`AnomalyScoutLib.intensity_envelope`); ``atlas`` each slice's score against the model's position
    atlas (:mod:`AnomalyScoutLib.position_atlas`); ``denoiser`` its score against the model's denoiser
    (:mod:`AnomalyScoutLib.denoiser`). Each is ``None`` for a model without it, and ``denoiser`` also in
    ``denoise`` mode, where it is the score itself.
    """

    positions: np.ndarray
    scores: np.ndarray
    pixel: np.ndarray
    feature: np.ndarray
    beyond_mm2: np.ndarray | None = None
    atlas: np.ndarray | None = None
    denoiser: np.ndarray | None = None

    def second_opinions(self) -> dict[str, np.ndarray]:
        """The slice scores of the model's other opinions beside its own score, by calibration key."""
        found = {ATLAS_CALIBRATION_KEY: self.atlas, DENOISER_CALIBRATION_KEY: self.denoiser}
        return {key: scores for key, scores in found.items() if scores is not None}


def canonical_view(array_zyx: np.ndarray, frame: AxialFrame) -> np.ndarray:
    """A writable canonical-order *view* of a file-order array (``to_canonical`` returns a copy).

    Writing batch ``k0:k1`` of the view writes the matching voxels of the file-order array, e.g. a memory map.
    """
    view = np.transpose(array_zyx, frame.axes)
    for axis, flip in enumerate(frame.flips):
        if flip:
            view = np.flip(view, axis=axis)
    return view


class VolumeScorer:
    """Reconstructs and scores canonical CT volumes with one model, mode and score definition.

    Args:
        model: the loaded model (networks already on ``device``).
        inversion: reconstruction mode and its settings.
        score: slice/case score definition.
        device: where the networks run.
        batch_size: slices per batch (halved automatically on CUDA out-of-memory).
        precision: ``"auto"``: bf16 where ``device`` computes it natively (on a CPU in ``fast`` mode only);
            ``"fp32"``: never (:mod:`AnomalyScoutLib.precision`).
    """

    def __init__(
        self,
        model: AnomalyModel,
        inversion: InversionConfig,
        score: ScoreConfig,
        device: torch.device,
        batch_size: int = 16,
        precision: str = "auto",
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        if inversion.mode == DENOISE_MODE and model.denoiser is None:
            raise ConfigError(
                f"mode {DENOISE_MODE!r} needs a model with a denoiser (anomalyscout train-denoiser); "
                "this one has none: use --mode fast"
            )
        if check_precision(precision) == "fp32":
            inversion = dataclasses.replace(inversion, amp=False)
        self.model, self.inversion, self.score_config, self.device = model, inversion, score, device
        self.batch_size = batch_size
        #: HU no normal body voxel reaches (fitted by ``calibrate``); None for models calibrated before it.
        self.envelope = IntensityEnvelope.from_metadata(model.metadata)
        # A head model's score is its map: the feature residual would only fill a column nobody reads.
        self.reconstructor = Reconstructor(
            model.generator,
            model.encoder,
            model.discriminator,
            inversion,
            device,
            feature_residual=model.head is None,
            # fast mode only: what bf16 moves was measured there; the refinement's gradients were not
            cpu_bf16=inversion.resolved_steps == 0,
        )

    @property
    def precision(self) -> str:
        """What the networks compute in: ``"bf16"`` (autocast, where the device does it natively and
        ``--precision auto``) or ``"fp32"``."""
        return "bf16" if self.reconstructor.bf16 else "fp32"

    def calibration_settings(self) -> dict[str, Any]:
        """What ``calibrate`` stores with a calibration made by this scorer (see ``calibration_settings``)."""
        return calibration_settings(self.score_config.as_dict(), self.inversion.resolved_steps)

    def opinion_settings(self, key: str) -> dict[str, Any] | None:
        """What the calibration of the second opinion ``key`` is made with (its definition and the case
        score), None for a model without it."""
        case_top = {"case_top": self.score_config.case_top}
        if key == ATLAS_CALIBRATION_KEY and self.model.atlas is not None:
            return {**dataclasses.asdict(self.model.atlas.config), **case_top}
        if key == DENOISER_CALIBRATION_KEY and self.model.denoiser is not None:
            return {**self.model.denoiser.config.to_dict(), **case_top}
        return None

    def opinion_calibration(self, key: str) -> ModeCalibration | None:
        """The stored calibration of the second opinion ``key``, if made with exactly its settings."""
        found = self.stored_calibration().modes.get(key)
        settings = self.opinion_settings(key)
        if found is None or settings is None or dict(found.score_config) != settings:
            return None
        return found

    def opinions(self) -> int:
        """How many calibrated opinions judge a slice: the score's, and each calibrated second opinion's
        (atlas, denoiser). Each is judged at the false-positive rate divided by this, so that flagging a
        slice when any of them flags it keeps the rate the user asked for (:func:`combine_opinions`)."""
        return 1 + sum(self.opinion_calibration(key) is not None for key in self.second_opinion_keys())

    @property
    def denoising(self) -> bool:
        """``denoise`` mode: the denoiser draws the pseudo-normal slices and its residual is the score."""
        return self.inversion.mode == DENOISE_MODE

    @property
    def score_name(self) -> str:
        """What the slice's own score is, in words: the head's map, the denoiser's or the generator's
        residual (``scores.json``'s ``riskiest_opinion`` names the others as ``OPINION_NAMES`` does)."""
        if self.denoising:
            return OPINION_NAMES[DENOISER_CALIBRATION_KEY]
        return "anomaly map" if self.draws_map else "residual"

    @property
    def draws_map(self) -> bool:
        """Whether runs draw the head's anomaly map (a model with a head, in a generator mode)."""
        return self.model.head is not None and not self.denoising

    def second_opinion_keys(self) -> tuple[str, ...]:
        """The opinions this run hears beside its own score: all of them, but the denoiser's in ``denoise``
        mode, where it is the score itself."""
        return tuple(key for key in OPINION_NAMES if not (self.denoising and key == DENOISER_CALIBRATION_KEY))

    def run_settings(self) -> tuple[str, ScoreConfig, int]:
        """Mode, score and steps: what :meth:`Calibration.for_run` matches a stored calibration against."""
        return self.inversion.mode, self.score_config, self.inversion.resolved_steps

    def stored_calibration(self) -> Calibration:
        """Every calibration in the model file (empty for an uncalibrated model)."""
        return Calibration.from_json(self.model.metadata.get("calibration"))

    def mode_calibration(self) -> ModeCalibration | None:
        """The model's calibration for exactly this run's settings, or ``None`` (``Calibration.for_run``)."""
        return self.stored_calibration().for_run(*self.run_settings())

    def _reconstruct(
        self,
        x: torch.Tensor,
        position: torch.Tensor,
        body: torch.Tensor,
        cancel: CancelFlag | None,
        listener: RunListener,
    ) -> Reconstruction:
        """Reconstruct, splitting the batch in halves while CUDA runs out of memory."""
        try:
            if self.denoising:
                with torch.inference_mode(), self.reconstructor.autocast():
                    images = self.model.denoiser(x).float()
                return Reconstruction(images, torch.zeros(len(x), device=images.device))
            return self.reconstructor.reconstruct(x, position, body, cancel)
        except torch.cuda.OutOfMemoryError:
            if len(x) == 1:
                raise ConfigError(
                    f"{self.device} ran out of memory on a single slice; use --device cpu or a smaller model"
                ) from None
            torch.cuda.empty_cache()
            # min: a batch prepared before an earlier halving must not raise the size again
            self.batch_size = min(self.batch_size, max(1, len(x) // 2))
            listener.warning(f"{self.device} ran out of memory; batch size reduced to {self.batch_size}")
            half = len(x) // 2
            parts = [
                self._reconstruct(x[s], position[s], body[s], cancel, listener)
                for s in (slice(0, half), slice(half, None))
            ]
            return Reconstruction(
                torch.cat([p.images for p in parts]), torch.cat([p.feature_residual for p in parts])
            )

    def _mask_to_model(self, grid: ModelGrid, mask: np.ndarray) -> torch.Tensor:
        """A boolean canonical mask batch on the model grid (on :attr:`device`): resampled, then > 0.5."""
        return grid.to_model(torch.from_numpy(mask.astype(np.float32)), fill=0.0).to(self.device) > 0.5

    def score(
        self,
        canonical_hu: np.ndarray,
        spacing_kji: tuple[float, float, float],
        *,
        region: np.ndarray | None = None,
        sink: BatchSink | None = None,
        listener: RunListener | None = None,
        cancel: CancelFlag | None = None,
        positions: np.ndarray | None = None,
    ) -> CaseScores:
        """Score every canonical slice of ``canonical_hu`` (k, rows, cols; float32 or integer HU).

        Two helper threads keep a second core busy while the networks run on this one: one prepares the next
        batch (float32 copy, body mask), one finishes the previous batch's maps on the input grid and hands
        them to ``sink``. Both use numpy and scipy only, never torch, so they do not compete for torch's
        thread pool; the results are those of doing the same steps one after another.

        Args:
            region: optional boolean canonical mask (an organ) that restricts the residual and the scores.
            sink: receives each batch's residual, reconstruction (HU) and, with a head, anomaly map on the
                input grid (:class:`BatchSink`); ``None``: scores only.
            listener: told about each scored slice, with an ETA.
            cancel: checked between batches and between optimisation steps.
            positions: each slice's position on the model's scale (``position.place_slices``); default: the
                model's own definition. The generator is conditioned on it clipped to its range [0, 1].

        When the model has a head, a slice's ``score`` is the head's top-k of its map (``pixel`` and
        ``feature`` stay the residual's parts). In ``denoise`` mode it is the denoiser's score (and the
        head, which reads the generator's reconstruction, is not run).
        """
        listener = listener or _SilentListener()
        model = self.model
        n_slices, rows, cols = canonical_hu.shape
        if region is not None and region.shape != canonical_hu.shape:
            raise VolumeError(f"mask shape {region.shape} does not match the volume's {canonical_hu.shape}")
        if positions is None:
            positions = slice_positions(canonical_hu, spacing_kji, model.position_method)
        elif len(positions) != n_slices:
            raise VolumeError(f"{len(positions)} slice positions for {n_slices} slices")
        condition = np.clip(np.asarray(positions, dtype=np.float32), 0.0, 1.0)
        grid = model_grid((rows, cols), spacing_kji[1:], model.resolution)
        scores, pixel, feature, beyond, atlas, denoised = (np.zeros(n_slices) for _ in range(6))
        pixel_area_mm2 = float(spacing_kji[1] * spacing_kji[2])
        start = time.perf_counter()
        preparing = ThreadPoolExecutor(1, thread_name_prefix="anomalyscout-prepare")
        finishing = ThreadPoolExecutor(1, thread_name_prefix="anomalyscout-finish")

        def prepare(k0: int) -> Future[_Batch]:
            k1 = min(n_slices, k0 + self.batch_size)
            return preparing.submit(_prepare_batch, canonical_hu, region, k0, k1, self.envelope)

        finished: Future[None] | None = None
        try:
            upcoming: Future[_Batch] | None = prepare(0)
            while upcoming is not None:
                if cancel is not None:
                    cancel.raise_if_set()
                batch = upcoming.result()
                k0, k1 = batch.k0, batch.k1
                upcoming = prepare(k1) if k1 < n_slices else None
                x = grid.to_model(model.window.normalize(torch.from_numpy(batch.hu))).to(self.device)
                body_m = self._mask_to_model(grid, batch.body)
                area_m = body_m if region is None else self._mask_to_model(grid, batch.area)
                position = torch.from_numpy(condition[k0:k1]).to(self.device)
                result = self._reconstruct(x, position, body_m, cancel, listener)
                smoothing = 0.0 if self.denoising else self.score_config.smoothing_px
                residual = residual_maps(x, result.images, area_m, smoothing)
                if self.denoising:  # the denoiser's own score, the top of its unsmoothed residual
                    score = top_fraction_mean(residual, area_m, model.denoiser.config.top_fraction)
                    batch_scores = SliceScores(score, score, result.feature_residual)
                else:
                    batch_scores = score_slices(
                        x, result.images, area_m, residual, result.feature_residual, self.score_config
                    )
                scores[k0:k1] = batch_scores.score.cpu().numpy()
                pixel[k0:k1] = batch_scores.pixel.cpu().numpy()
                feature[k0:k1] = batch_scores.feature.cpu().numpy()
                if self.envelope is not None:
                    beyond[k0:k1] = self.envelope.area_mm2(batch.beyond, pixel_area_mm2)
                if model.atlas is not None:
                    atlas[k0:k1] = model.atlas.slice_scores(x, position, area_m).cpu().numpy()
                if model.denoiser is not None and not self.denoising:
                    with torch.inference_mode(), self.reconstructor.autocast():
                        denoised[k0:k1] = model.denoiser.slice_scores(x, area_m).cpu().numpy()
                maps = None
                if self.draws_map:
                    with torch.inference_mode(), self.reconstructor.autocast():
                        maps = model.head.anomaly_map(x, result.images, position, area_m)
                        scores[k0:k1] = model.head.slice_scores(maps, area_m).cpu().numpy()
                if sink is not None:
                    on_input_grid = (
                        grid.from_model(residual.cpu()).numpy(),
                        # HU on the model grid, then resampled: bilinear weights sum to one, so this is the
                        # same map up to float rounding, with 1/16 of the arithmetic of doing it at 512²
                        grid.from_model(model.window.denormalize(result.images.cpu())).numpy(),
                        None if maps is None else grid.from_model(maps.cpu()).numpy(),
                    )
                    if finished is not None:
                        finished.result()  # one batch in the writer at most: bounded memory, errors surface
                    finished = finishing.submit(_finish_batch, sink, batch, *on_input_grid)
                elapsed = time.perf_counter() - start
                for k in range(k0, k1):
                    eta = elapsed / k1 * (n_slices - k1)
                    listener.progress(k + 1, n_slices, k, float(scores[k]), eta)
            if finished is not None:
                finished.result()
        finally:
            # also on an error or a cancellation: nothing may still write into the sink once score returns
            preparing.shutdown(wait=True, cancel_futures=True)
            finishing.shutdown(wait=True, cancel_futures=True)
        return CaseScores(
            positions=positions.astype(np.float64),
            scores=scores,
            pixel=pixel,
            feature=feature,
            beyond_mm2=None if self.envelope is None else beyond,
            atlas=None if model.atlas is None else atlas,
            denoiser=None if model.denoiser is None or self.denoising else denoised,
        )


class BatchSink(Protocol):
    """Where :meth:`VolumeScorer.score` puts each batch's maps on the input grid, canonical slices ``k0:``.

    Called from the scorer's finishing thread, one batch at a time and in order: an implementation needs no
    lock, but must not call torch (the networks own its thread pool on the scoring thread).
    """

    def write(
        self, k0: int, residual: np.ndarray, reconstruction_hu: np.ndarray, anomaly_map: np.ndarray | None
    ) -> None: ...


@dataclass(frozen=True)
class _Batch:
    """Canonical slices ``k0:k1`` on the input grid, made ready for the networks (one batch ahead)."""

    k0: int
    k1: int
    hu: np.ndarray
    body: np.ndarray
    area: np.ndarray
    beyond: np.ndarray | None = None


def _prepare_batch(
    canonical_hu: np.ndarray,
    region: np.ndarray | None,
    k0: int,
    k1: int,
    envelope: IntensityEnvelope | None = None,
) -> _Batch:
    """A float32 copy of slices ``k0:k1``, their body mask, the body within ``region``, and the voxels of
    that area above ``envelope`` (numpy, scipy)."""
    hu = np.array(canonical_hu[k0:k1], dtype=np.float32)
    body = body_mask(hu)
    area = body if region is None else body & region[k0:k1]
    beyond = None if envelope is None else envelope.beyond(hu, area)
    return _Batch(k0, k1, hu, body, area, beyond)


def _finish_batch(
    sink: BatchSink,
    batch: _Batch,
    residual: np.ndarray,
    images_hu: np.ndarray,
    anomaly_map: np.ndarray | None,
) -> None:
    """Mask a batch's maps on the input grid and hand them to ``sink`` (the finishing thread; numpy only).

    The residual and the map are 0 outside the scored area; the reconstruction keeps the input outside the
    body, so that it reads as the CT with only the patient re-generated. Voxels beyond the intensity envelope
    (metal, which the window hides from the networks) are drawn at the top of both maps' scales.
    """
    residual = residual * batch.area
    anomaly_map = None if anomaly_map is None else anomaly_map * batch.area
    if batch.beyond is not None and batch.beyond.any():
        residual[batch.beyond] = RESIDUAL_TOP
        if anomaly_map is not None:
            anomaly_map[batch.beyond] = 1.0
    sink.write(batch.k0, residual, np.where(batch.body, images_hu, batch.hu), anomaly_map)


@dataclass(frozen=True)
class ScoreOptions:
    """Options of one scoring run that are not the model's (the command line's ``score`` options)."""

    fpr: float | None = None
    mask_path: str | None = None
    mask_label: int | None = None
    series_uid: str | None = None
    position: str = "auto"

    def __post_init__(self) -> None:
        if self.fpr is not None:
            check_fpr(self.fpr)
        if self.position not in PLACEMENT_METHODS:
            raise ConfigError(
                f"--position must be one of {', '.join(PLACEMENT_METHODS)}, got {self.position!r}"
            )
        if self.mask_label is not None and self.mask_path is None:
            raise ConfigError("--mask-label needs --mask")


@dataclass(frozen=True)
class ScoreRun:
    """What a finished run produced: the output paths and the scores that are also in ``scores.json``."""

    outputs: dict[str, Path]
    case: CaseScores
    calibrated: CalibratedScores
    case_score: float
    calibrated_by_model: bool
    timings: dict[str, float] = field(default_factory=dict)
    placement: SlicePlacement | None = None
    gate: GateResult | None = None

    @property
    def flagged_slices(self) -> list[int]:
        return [int(k) for k in np.flatnonzero(self.calibrated.flagged)]


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _calibrate(
    scorer: VolumeScorer,
    case: CaseScores,
    cases_of: tuple[float, dict[str, float]],
    fpr: float | None,
    listener: RunListener,
) -> tuple[CalibratedScores, bool, float]:
    """Percentiles and flags from the model's calibration, or the per-case fallback with a warning.

    ``cases_of``: the case score, and each second opinion's by key. With calibrated second opinions (atlas,
    denoiser), every opinion is judged at the false-positive rate divided by their number
    (:func:`combine_opinions`); an uncalibrated one is left out, with a warning.
    """
    score_of_case, opinion_cases = cases_of
    stored = scorer.stored_calibration()
    fpr = stored.default_fpr if fpr is None else fpr
    mode_calibration = stored.for_run(*scorer.run_settings())
    if mode_calibration is None:
        listener.warning(
            f"{stored.why_not_for_run(*scorer.run_settings())}: slices are ranked against this case's own "
            "median (run `anomalyscout calibrate`)"
        )
        return self_calibrated(case.scores, score_of_case, fpr), False, fpr
    share = fpr / scorer.opinions()
    combined = mode_calibration.apply(case.scores, case.positions, score_of_case, share)
    riskiest = np.full(len(case.scores), scorer.score_name, dtype=object)
    for key, scores in case.second_opinions().items():
        calibration = scorer.opinion_calibration(key)
        if calibration is None:
            listener.warning(UNCALIBRATED_OPINION.format(OPINION_NAMES[key]))
            continue
        second = calibration.apply(scores, case.positions, opinion_cases[key], share)
        riskier = np.nan_to_num(second.exceedance, nan=-np.inf) > np.nan_to_num(
            combined.exceedance, nan=-np.inf
        )
        riskiest = np.where(riskier, OPINION_NAMES[key], riskiest)
        combined = combine_opinions(combined, second)
    return replace(combined, opinion=riskiest if scorer.opinions() > 1 else None), True, fpr


def _write_tables(
    staging: Path,
    case: CaseScores,
    calibrated: CalibratedScores,
    centers_ras: np.ndarray,
    summary: Mapping[str, Any],
    placement: SlicePlacement,
    gate: GateResult,
) -> None:
    """``scores.csv`` (``flagged`` and ``in_range`` as 0/1) and ``scores.json`` (NaN written as null)."""
    with open(staging / "scores.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slice_index", "position", "score", "percentile", "flagged", "in_range"])
        for k in range(len(case.scores)):
            percentile = calibrated.percentile[k]
            writer.writerow(
                [
                    k,
                    f"{case.positions[k]:.6f}",
                    f"{case.scores[k]:.6g}",
                    f"{percentile:.3f}" if math.isfinite(percentile) else "",
                    int(calibrated.flagged[k]),
                    int(gate.in_range[k]),
                ]
            )
    slices = [
        {
            "slice_index": k,
            "position": float(case.positions[k]),
            "score": float(case.scores[k]),
            "percentile": _finite(calibrated.percentile[k]),
            "flagged": bool(calibrated.flagged[k]),
            "threshold": _finite(calibrated.threshold[k]),
            "pixel_score": float(case.pixel[k]),
            "feature_score": _finite(case.feature[k]),
            "beyond_normal_mm2": None if case.beyond_mm2 is None else float(case.beyond_mm2[k]),
            "atlas_score": None if case.atlas is None else float(case.atlas[k]),
            "denoiser_score": None if case.denoiser is None else float(case.denoiser[k]),
            "riskiest_opinion": None if calibrated.opinion is None else str(calibrated.opinion[k]),
            "center_ras": [float(c) for c in centers_ras[k]],
            "in_range": bool(gate.in_range[k]),
            "out_of_range": gate.reason[k] or None,
            "position_uncertainty": _finite(placement.uncertainty[k]),
            "position_own": _finite(placement.own[k]),
        }
        for k in range(len(case.scores))
    ]
    text = json.dumps({**summary, "slices": slices}, indent=1, allow_nan=False)
    (staging / "scores.json").write_text(text + "\n", encoding="utf-8")


@dataclass(frozen=True)
class _ScanInput:
    """What a run keeps of its input once read: the canonical CT, the organ region, and where the slices lie.

    ``canonical_hu`` holds the file's own voxel type: int16 for most CT (half the memory of float32), float32
    for float files.

    The file-order volume itself is dropped after reading (the canonical copy is all scoring needs), so only
    its ``geometry`` (shape, spacing, origin, direction) is kept, for the output volumes' headers.
    """

    canonical_hu: np.ndarray
    frame: AxialFrame
    region: np.ndarray | None
    centers_ras: np.ndarray
    geometry: tuple[Any, ...]
    source: str


def _read_input(input_path: str | os.PathLike[str], options: ScoreOptions) -> _ScanInput:
    """Read the CT (and its organ mask) and bring both into canonical slice order.

    Raises:
        VolumeError: the input or the mask cannot be read, or the mask has no voxel of the requested label.
    """
    # An int16 CT stays int16: the scorer converts each batch to float32, with the same values.
    volume = read_volume(input_path, options.series_uid, native_integers=True)
    frame = axial_frame(volume)
    region = None
    if options.mask_path is not None:
        labels = to_canonical(read_label_map(options.mask_path, reference=volume), frame)
        region = labels == options.mask_label if options.mask_label is not None else labels > 0
        if not region.any():
            raise VolumeError(f"mask {options.mask_path} has no voxel of the requested label")
    return _ScanInput(
        canonical_hu=to_canonical(volume.array_zyx, frame),
        frame=frame,
        region=region,
        centers_ras=slice_centers_ras(volume, frame),
        geometry=(volume.array_zyx.shape, volume.spacing_xyz, volume.origin_xyz, volume.direction),
        source=volume.source or os.fspath(input_path),
    )


class _OutputVolumes:
    """``residual.nrrd`` and ``reconstruction.nrrd`` (and ``anomaly_map.nrrd`` with a head) in the staging
    folder: the :class:`BatchSink` of a run.

    Each batch goes to disk as it comes: as one plain write per file where the canonical slices are the
    file's z slices (axial acquisitions), else through the file's memory map; then it is flushed, so that
    neither the process nor the final commit holds or waits for a whole volume. A context manager: the
    files are closed on leaving, also on an error or a cancellation (the staging folder is then deleted by
    :class:`AtomicOutputDir`).
    """

    def __init__(self, staging: Path, scan: _ScanInput, with_map: bool = False) -> None:
        self._residual_file = NrrdVolumeWriter(staging / "residual.nrrd", *scan.geometry)
        self._reconstruction_file = NrrdVolumeWriter(staging / "reconstruction.nrrd", *scan.geometry)
        self._map_file = NrrdVolumeWriter(staging / ANOMALY_MAP_FILE, *scan.geometry) if with_map else None
        self._frame = scan.frame

    def __enter__(self) -> _OutputVolumes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._residual_file.close()
        self._reconstruction_file.close()
        if self._map_file is not None:
            self._map_file.close()

    def write(
        self, k0: int, residual: np.ndarray, reconstruction_hu: np.ndarray, anomaly_map: np.ndarray | None
    ) -> None:
        """Store canonical slices ``k0 : k0 + len(residual)`` of every output (:class:`BatchSink`)."""
        for file, batch in (
            (self._residual_file, residual),
            (self._reconstruction_file, reconstruction_hu),
            (self._map_file, anomaly_map),
        ):
            if file is None or batch is None:
                continue
            slab = self._frame.file_slab(k0, batch)
            if slab is not None:
                file.write_slices(*slab)
            else:
                canonical_view(file.array_zyx, self._frame)[k0 : k0 + len(batch)] = batch
            file.release_pages()

    def heatmap(self) -> np.ndarray:
        """What the montage shows, as a canonical view: the head's map when there is one, else the residual
        (drop it before the block ends)."""
        file = self._residual_file if self._map_file is None else self._map_file
        return canonical_view(file.array_zyx, self._frame)


def _panel_note(k: int, calibrated: CalibratedScores, gate: GateResult) -> str:
    """Under a montage panel's score: why the model does not judge the slice, or, with several opinions,
    which one ranks it highest (the heatmap drawn may be another's)."""
    if not gate.in_range[k]:
        return f"out of range ({gate.reason[k]})"
    return "" if calibrated.opinion is None else f"riskiest: {calibrated.opinion[k]}"


def _write_flagged_montage(
    path: Path,
    scan: _ScanInput,
    heatmap: tuple[np.ndarray, str],
    case: CaseScores,
    calibrated: CalibratedScores,
    gate: GateResult,
) -> None:
    """``flagged.png``: the :data:`MONTAGE_SLICES` most anomalous slices, CT under its heatmap (canonical
    view and colour-bar label); slices outside the model's range come last and are marked, and the title
    says how many there are."""
    values, label = heatmap
    # ties at the top percentile broken as the flags judge: the riskiest opinion's score over its threshold
    ranked = np.where(gate.in_range, calibrated.exceedance, np.nan)
    panels = [
        MontagePanel(
            k,
            np.asarray(scan.canonical_hu[k], dtype=np.float32),
            np.array(values[k]),
            float(case.scores[k]),
            float(calibrated.percentile[k]),
            bool(calibrated.flagged[k]),
            note=_panel_note(k, calibrated, gate),
            judged=bool(gate.in_range[k]),
        )
        for k in most_anomalous(ranked, calibrated.percentile, MONTAGE_SLICES)
    ]
    title = "most anomalous slices (red: flagged)"
    if gate.summary is not None:
        title += f"; {gate.summary}"
    write_montage(path, panels, scan.frame.spacing_kji[1:], title=title, heatmap_label=label)


def _run_summary(
    scorer: VolumeScorer,
    scan: _ScanInput,
    options: ScoreOptions,
    score_of_case: float,
    calibrated: CalibratedScores,
    by_model: bool,
    fpr: float,
    timings: dict[str, float],
) -> dict[str, Any]:
    """The case-level part of ``scores.json``: the case's result and everything needed to reproduce it."""
    return {
        "case_score": _finite(score_of_case),
        "case_percentile": _finite(calibrated.case_percentile),
        "case_flagged": calibrated.case_flagged,
        "calibrated": by_model,
        "model_id": str(scorer.model.metadata.get("model_id", "")),
        "mode": scorer.inversion.mode,
        "steps": scorer.inversion.resolved_steps,
        "score_config": scorer.score_config.as_dict(),
        "fpr": fpr,
        "device": str(scorer.device),
        "precision": scorer.precision,
        "input": scan.source,
        "mask": options.mask_path,
        "intensity_envelope_hu": None if scorer.envelope is None else scorer.envelope.high_hu,
        "timings": timings,
    }


def _place_and_gate(
    scan: _ScanInput, scorer: VolumeScorer, options: ScoreOptions
) -> tuple[SlicePlacement, GateResult]:
    """Where the scan's slices lie on the model's scale, and which of them the model may judge.

    Raises:
        VolumeError: no slice lies in the model's range (a head, a limb, a chest crop): nothing is scored.
    """
    placement, gate = place_and_gate(
        scan.canonical_hu, scan.frame.spacing_kji, scorer.model.position_regressor, options.position
    )
    require_in_range(gate, placement)
    return placement, gate


def _placement_modules(scorer: VolumeScorer, options: ScoreOptions) -> tuple[str, ...]:
    """What placing this run's slices will import: the fit's optimiser when they are placed by anatomy."""
    by_anatomy = options.position != "index" and scorer.model.position_regressor is not None
    return (OPTIMIZER_MODULE,) if by_anatomy else ()


def _placement_warnings(placement: SlicePlacement, gate: GateResult, scorer: VolumeScorer) -> list[str]:
    """What the user must hear about the placement: no regressor, too few slices, slices out of range, a
    calibration made with the other placement."""
    warnings = [m for m in [placement_mismatch(scorer.mode_calibration(), placement.method)] if m]
    if placement.how == NO_REGRESSOR_NOTE or len(placement.positions) < 5 or placement.reversed:
        warnings.append(placement.how)
    if gate.summary is not None:
        warnings.append(gate.summary)
    return warnings


def metal_slices(case: CaseScores, envelope: IntensityEnvelope | None, gate: GateResult) -> np.ndarray:
    """The in-range slices with enough body beyond the intensity envelope (all False without an envelope):
    what ``score`` flags at percentile 100 and ``review`` gives infinite risk."""
    if envelope is None or case.beyond_mm2 is None:
        return np.zeros(len(case.scores), dtype=bool)
    return envelope.flags(case.beyond_mm2) & gate.in_range


def _envelope_flags(
    calibrated: CalibratedScores, case: CaseScores, envelope: IntensityEnvelope | None, gate: GateResult
) -> CalibratedScores:
    """The :func:`metal_slices` are flagged at percentile 100, and so is their case, whatever the residual
    says: the networks cannot see above their window."""
    beyond = metal_slices(case, envelope, gate)
    if not beyond.any():
        return calibrated
    return replace(
        calibrated,
        percentile=np.where(beyond, 100.0, calibrated.percentile),
        flagged=calibrated.flagged | beyond,
        case_percentile=100.0,
        case_flagged=True,
    )


@dataclass(frozen=True)
class CaseJudgement:
    """What :func:`calibrate_case` made of a scored case: percentiles and flags, whether the model's own
    calibration made them (else the case-wise fallback), the rate used, the case score and the domain
    check's warning (None when the flags stand)."""

    calibrated: CalibratedScores
    by_model: bool
    fpr: float
    case_score: float
    domain_warning: str | None


def calibrate_case(
    scorer: VolumeScorer,
    case: CaseScores,
    gate: GateResult,
    fpr: float | None = None,
    listener: RunListener | None = None,
) -> CaseJudgement:
    """Every rule between raw scores and flags, in order, for ``score``, ``review`` and ``rank`` alike: the
    case score of the in-range slices, the model's calibration (with its atlas, each opinion at half the
    rate) or the case-wise fallback, the range gate and the domain check, then the intensity envelope."""
    listener = listener or _SilentListener()
    score_of_case = case_score(case.scores[gate.in_range], scorer.score_config)
    opinion_cases = {
        key: case_score(scores[gate.in_range], scorer.score_config)
        for key, scores in case.second_opinions().items()
    }
    calibrated, by_model, fpr = _calibrate(scorer, case, (score_of_case, opinion_cases), fpr, listener)
    calibrated, domain_warning = _gate_flags(calibrated, gate, by_model, listener)
    calibrated = _envelope_flags(calibrated, case, scorer.envelope, gate)
    return CaseJudgement(calibrated, by_model, fpr, score_of_case, domain_warning)


def _gate_flags(
    calibrated: CalibratedScores, gate: GateResult, by_model: bool, listener: RunListener
) -> tuple[CalibratedScores, str | None]:
    """Out-of-range slices: never flagged, no percentile. A scan unlike the calibration data: no flags."""
    warning = domain_check(calibrated.flagged, gate.in_range) if by_model else None
    flagged = calibrated.flagged & gate.in_range
    case_flagged = calibrated.case_flagged
    if warning is not None:
        listener.warning(warning)
        flagged, case_flagged = np.zeros_like(flagged), False
    gated = replace(
        calibrated,
        percentile=np.where(gate.in_range, calibrated.percentile, np.nan),
        threshold=np.where(gate.in_range, calibrated.threshold, np.nan),
        flagged=flagged,
        case_flagged=case_flagged,
    )
    return gated, warning


def _position_summary(
    placement: SlicePlacement, gate: GateResult, domain_warning: str | None
) -> dict[str, Any]:
    """The ``scores.json`` keys that say how the slices were placed and gated."""
    return {
        "position_method": placement.method,
        "position_note": placement.how,
        "position_mm_per_unit": placement.mm_per_unit,
        "slices_in_range": int(gate.in_range.sum()),
        "range_summary": gate.summary,
        "domain_warning": domain_warning,
    }


def score_file(
    input_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    scorer: VolumeScorer,
    options: ScoreOptions | None = None,
    *,
    listener: RunListener | None = None,
    cancel: CancelFlag | None = None,
) -> ScoreRun:
    """Score one CT file or DICOM folder and write the contract's five outputs into ``out_dir`` atomically.

    The steps: read the input, score every slice into the output volumes, calibrate, draw the montage, write
    the tables, and only then move the staged folder into place.

    Raises:
        VolumeError: the input (or mask) cannot be read or is not CT.
        ConfigError: bad options or an unwritable output folder.
        CancelledError: ``cancel`` was set; ``out_dir`` is left as it was.
    """
    options = options or ScoreOptions()
    listener = listener or _SilentListener()
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    # imports while this thread reads the CT: the position fit's optimiser (needed sooner), then matplotlib
    loading = preload_modules(*_placement_modules(scorer, options), *MATPLOTLIB_MODULES)
    scan = _read_input(input_path, options)
    placement, gate = _place_and_gate(scan, scorer, options)
    timings["read_s"] = time.perf_counter() - clock
    model_id = str(scorer.model.metadata.get("model_id", ""))
    listener.started(scan.frame.n_slices, str(scorer.device), scorer.inversion.mode, model_id)
    for message in _placement_warnings(placement, gate, scorer):
        listener.warning(message)
    if scan.region is not None:
        listener.warning(
            "calibration is for whole-body scores: percentiles inside an organ mask are approximate"
        )

    with AtomicOutputDir(out_dir) as out:
        with _OutputVolumes(out.staging, scan, with_map=scorer.draws_map) as volumes:
            clock = time.perf_counter()
            case = scorer.score(
                scan.canonical_hu,
                scan.frame.spacing_kji,
                region=scan.region,
                sink=volumes,
                listener=listener,
                cancel=cancel,
                positions=placement.positions,
            )
            timings["score_s"] = time.perf_counter() - clock
            clock = time.perf_counter()
            judged = calibrate_case(scorer, case, gate, options.fpr, listener)
            calibrated, by_model, fpr = judged.calibrated, judged.by_model, judged.fpr
            score_of_case, domain_warning = judged.case_score, judged.domain_warning
            loading.join()  # the montage's imports are done (or failed, for write_montage to report)
            label = ANOMALY_MAP_LABEL if scorer.draws_map else RESIDUAL_LABEL
            _write_flagged_montage(
                out.staging / "flagged.png", scan, (volumes.heatmap(), label), case, calibrated, gate
            )
        timings["write_s"] = time.perf_counter() - clock
        summary = _run_summary(scorer, scan, options, score_of_case, calibrated, by_model, fpr, timings)
        summary.update(_position_summary(placement, gate, domain_warning))
        _write_tables(out.staging, case, calibrated, scan.centers_ras, summary, placement, gate)
        outputs = out.commit()
    return ScoreRun(outputs, case, calibrated, score_of_case, by_model, timings, placement, gate)
