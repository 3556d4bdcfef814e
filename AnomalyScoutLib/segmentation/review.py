"""Segmentation review: which slices of a segmentation (from any model) are most at risk of being wrong.

A segmentation model trained on normal anatomy fails silently where the anatomy is unlike its training data
(a tumour, ascites, a metal implant). The reviewer's question is not "is this slice anomalous?" but "is the
anatomy *in and around the segmented organ* unusual?": an anomaly in the pelvis says nothing about a liver
mask. So the CT is scored by the engine (:func:`~AnomalyScoutLib.engine.score_file`) inside the segmentation
grown by a margin (``margin_mm``, 3-D, so that a slice where the model missed the organ next to one where it
found it is still looked at, and so that an anomaly touching the organ's border counts), and each slice's
risk is its score over the calibrated threshold at its body position, the largest over the model's calibrated
opinions (its own score, the atlas's, the denoiser's): ``risk > 1`` is what ``anomalyscout score`` flags at
the model's false-positive rate, whichever opinion flags it. Slices the grown segmentation does not reach get
no risk (blank) and no flag. A slice with metal in that region (body voxels beyond the model's intensity
envelope, :mod:`AnomalyScoutLib.intensity_envelope`, which the residual cannot see) has risk ``inf``: beyond
anything normal, listed first.

Outputs (one atomic folder): ``review.csv`` (``slice_index, position, risk, flagged``; canonical slice order
as everywhere, design.md), ``review.png`` (the riskiest slices, heatmap over the CT, the segmentation's
contour in cyan), ``review_region.nrrd`` (the grown segmentation that was scored) and the engine's own
outputs (``residual.nrrd``, ``scores.json`` with each slice's RAS centre for "jump to slice", ...).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from AnomalyScoutLib.cancellation import CancelFlag
from AnomalyScoutLib.engine import (
    ANOMALY_MAP_FILE,
    RunListener,
    ScoreOptions,
    ScoreRun,
    VolumeScorer,
    metal_slices,
    score_file,
)
from AnomalyScoutLib.errors import ConfigError, VolumeError
from AnomalyScoutLib.io.geometry import axial_frame, to_canonical
from AnomalyScoutLib.io.volume import Volume, read_label_map, read_volume, write_volume
from AnomalyScoutLib.montage import ANOMALY_MAP_LABEL, RESIDUAL_LABEL, MontagePanel, write_montage
from AnomalyScoutLib.outputs import AtomicOutputDir

__all__ = [
    "REVIEW_FILES",
    "REVIEW_SLICES",
    "SegmentationReview",
    "grow_region",
    "review_segmentation",
    "slice_risk",
]

REVIEW_FILES: tuple[str, ...] = ("review.csv", "review.png", "review_region.nrrd")
#: Slices shown in ``review.png``.
REVIEW_SLICES = 8


@dataclass(frozen=True)
class SegmentationReview:
    """What a review found: per canonical slice, the risk (NaN outside the region) and the flag."""

    outputs: dict[str, Path]
    positions: np.ndarray
    risk: np.ndarray
    flagged: np.ndarray
    score_run: ScoreRun

    @property
    def risky_slices(self) -> list[int]:
        """Flagged slices, riskiest first (what a reviewer opens first)."""
        flagged = np.flatnonzero(self.flagged)
        return [int(k) for k in flagged[np.argsort(-self.risk[flagged], kind="stable")]]


def grow_region(
    organ_zyx: np.ndarray, spacing_zyx: tuple[float, float, float], margin_mm: float
) -> np.ndarray:
    """The organ plus every voxel within ``margin_mm`` of it (Euclidean, in mm, 3-D).

    The distance transform runs on the organ's bounding box grown by the margin, not on the whole volume: a
    512×512×600 CT would otherwise need gigabytes for the distances of voxels far from any organ.
    """
    if margin_mm < 0:
        raise ConfigError(f"--margin-mm must be >= 0, got {margin_mm}")
    reach = [int(math.ceil(margin_mm / s)) for s in spacing_zyx]
    found = np.argwhere(organ_zyx)
    low = np.maximum(found.min(axis=0) - reach, 0)
    high = np.minimum(found.max(axis=0) + 1 + np.array(reach), organ_zyx.shape)
    box = tuple(slice(a, b) for a, b in zip(low, high))
    distance = ndimage.distance_transform_edt(~organ_zyx[box], sampling=spacing_zyx)
    region = np.zeros(organ_zyx.shape, dtype=bool)
    region[box] = distance <= margin_mm
    return region


def slice_risk(exceedance: np.ndarray, in_region: np.ndarray, metal: np.ndarray | None = None) -> np.ndarray:
    """The calibrated exceedance, score over the threshold at the slice's position (1 = the flag threshold;
    the largest over the model's calibrated opinions, :class:`~AnomalyScoutLib.calibration.CalibratedScores`),
    ``inf`` where ``metal`` (slices the envelope flags); NaN for slices the region does not reach (their score
    says nothing about the segmentation)."""
    risk = np.asarray(exceedance, dtype=np.float64)
    if metal is not None:
        risk = np.where(metal, np.inf, risk)
    return np.where(in_region, risk, np.nan)


def _write_review_csv(path: Path, positions: np.ndarray, risk: np.ndarray, flagged: np.ndarray) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slice_index", "position", "risk", "flagged"])
        for k in range(len(risk)):
            shown = "" if math.isnan(risk[k]) else f"{risk[k]:.6g}"  # metal: "inf"
            writer.writerow([k, f"{positions[k]:.6f}", shown, int(flagged[k])])


def _write_review_montage(
    path: Path,
    canonical_hu: np.ndarray,
    heatmap: tuple[np.ndarray, str],
    organ: np.ndarray,
    review: tuple[np.ndarray, np.ndarray, np.ndarray],
    spacing_rc_mm: tuple[float, float],
) -> None:
    risk, percentile, flagged = review
    values, label = heatmap
    ranked = np.flatnonzero(~np.isnan(risk))  # metal's inf first
    ranked = ranked[np.argsort(-risk[ranked], kind="stable")][:REVIEW_SLICES]
    panels = [
        MontagePanel(
            int(k),
            canonical_hu[k],
            values[k],
            float(risk[k]),
            float(percentile[k]),
            bool(flagged[k]),
            contour=organ[k],
        )
        for k in ranked
    ]
    write_montage(
        path,
        panels,
        spacing_rc_mm,
        title="riskiest slices of the segmentation (red: flagged)",
        heatmap_label=label,
    )


def _organ_mask(segmentation: str | os.PathLike[str], volume: Volume, label: int | None) -> np.ndarray:
    """The segmented organ on the CT's grid, or a :class:`VolumeError` naming the file."""
    labels = read_label_map(segmentation, reference=volume)
    organ = labels == label if label is not None else labels > 0
    if not organ.any():
        wanted = f"label {label}" if label is not None else "label > 0"
        raise VolumeError(
            f"{segmentation}: the segmentation is empty (no voxel with {wanted}): nothing to review"
        )
    return organ


def review_segmentation(
    ct: str | os.PathLike[str],
    segmentation: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    scorer: VolumeScorer,
    *,
    label: int | None = None,
    margin_mm: float = 10.0,
    fpr: float | None = None,
    series_uid: str | None = None,
    listener: RunListener | None = None,
    cancel: CancelFlag | None = None,
) -> SegmentationReview:
    """Score ``ct`` in and around ``segmentation`` and write the review into ``out_dir`` atomically.

    Raises:
        VolumeError: the CT or the segmentation cannot be read, the segmentation is not on the CT's grid, or
            it holds no voxel of the organ.
        ConfigError: bad options or an unwritable output folder.
        CancelledError: ``cancel`` was set; ``out_dir`` is left as it was.
    """
    volume = read_volume(ct, series_uid)
    organ = _organ_mask(segmentation, volume, label)
    spacing_zyx = tuple(float(s) for s in reversed(volume.spacing_xyz))
    region = grow_region(organ, spacing_zyx, margin_mm)  # type: ignore[arg-type]
    frame = axial_frame(volume)
    with AtomicOutputDir(out_dir) as out:
        region_path = out.staging / "review_region.nrrd"
        write_volume(
            Volume(region.astype(np.uint8), volume.spacing_xyz, volume.origin_xyz, volume.direction),
            region_path,
        )
        del region
        options = ScoreOptions(fpr=fpr, mask_path=os.fspath(region_path), series_uid=series_uid)
        run = score_file(ct, out.staging, scorer, options, listener=listener, cancel=cancel)
        region_c = to_canonical(read_label_map(region_path), frame) > 0
        in_region = region_c.any(axis=(1, 2))
        metal = metal_slices(run.case, scorer.envelope, run.gate)
        risk = slice_risk(run.calibrated.exceedance, in_region, metal)
        flagged = run.calibrated.flagged & in_region
        _write_review_csv(out.staging / "review.csv", run.case.positions, risk, flagged)
        # The montage shows what the scores came from, as flagged.png does: the head's map when the model
        # has one, else the residual.
        heatmap_file, label = out.staging / ANOMALY_MAP_FILE, ANOMALY_MAP_LABEL
        if not heatmap_file.is_file():
            heatmap_file, label = out.staging / "residual.nrrd", RESIDUAL_LABEL
        heatmap = to_canonical(read_volume(heatmap_file, validate=False).array_zyx, frame)
        _write_review_montage(
            out.staging / "review.png",
            to_canonical(volume.array_zyx, frame),
            (heatmap, label),
            to_canonical(organ, frame),
            (risk, run.calibrated.percentile, flagged),
            frame.spacing_kji[1:],
        )
        outputs = out.commit()
    return SegmentationReview(outputs, run.case.positions, risk, flagged, run)
