"""Placing a whole scan at once: a robust straight line through the regressor's per-slice estimates.

One slice alone can look like another level (a bowel loop, an unusual liver), but a scan's slices move
through the body in step with their z in millimetres. So the positions of all slices are fitted together:
``position = offset + z_mm / mm_per_unit``, monotone by construction, where ``mm_per_unit`` is the body's
length from the pelvis floor to the lung bases (330 mm in the phantom, allowed to vary with body size within
:data:`BODY_SCALE_RANGE`). The loss is robust (Huber), so a few misplaced slices do not move the line.

The regressor was trained on the scale's own range, so near and beyond its ends its estimates saturate: a
slice estimated at or beyond :data:`CENSOR_LEVELS` is only known to lie *at or beyond* that end (a censored
observation), and only pushes the line when the line would put it inside. A chest scan whose slices all
saturate at the top has no anchor at all: its positions are lower bounds and it is marked as lying beyond
the range (:attr:`SlicePlacement.beyond`), which the range gate reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from AnomalyScoutLib.errors import VolumeError
from AnomalyScoutLib.metrics.detection import spearman

__all__ = [
    "BODY_SCALE_RANGE",
    "CENSOR_LEVELS",
    "MIN_FIT_SLICES",
    "MIN_FIT_SPAN_MM",
    "MM_PER_UNIT",
    "OPTIMIZER_MODULE",
    "SlicePlacement",
    "fit_positions",
]

#: Length of one unit of the scale (pelvis floor to lung bases) in an average adult: the phantom's 330 mm.
MM_PER_UNIT = 330.0
#: Body-size factors the fit may apply to :data:`MM_PER_UNIT` (small adults .. tall adults).
BODY_SCALE_RANGE = (0.75, 1.35)
#: Regressor estimates at or beyond these are treated as "at or beyond this end of the scale".
CENSOR_LEVELS = (0.02, 0.98)
#: Fewer slices, or a shorter span, than this fit only the offset (at the standard body size).
MIN_FIT_SLICES = 5
MIN_FIT_SPAN_MM = 40.0
#: What the fit imports on first use (a caller may import it ahead, see ``AnomalyScoutLib.preload``).
OPTIMIZER_MODULE = "scipy.optimize"
#: Huber threshold of the robust loss, in units of the scale.
_HUBER = 0.03
#: Spread of log(body scale) the prior allows without cost (a soft pull to the standard size).
_SCALE_PRIOR = 0.15
#: Smallest residual spread assumed (a perfect fit still has a regressor error).
_MIN_SPREAD = 0.005


@dataclass(frozen=True)
class SlicePlacement:
    """Where the slices of one scan lie on the anatomical scale, and how that was decided.

    Attributes:
        positions: fitted position of every canonical slice ``(n,)``.
        uncertainty: one standard error of each fitted position ``(n,)``.
        own: the regressor's estimate of every slice on its own ``(n,)`` (NaN for ``"index"``).
        beyond: ``(n,)`` int8: +1 the slice is only known to lie at or above the top of the scale, -1 at or
            below its bottom (no anchor in the scan), 0 placed.
        method: ``"anatomy"`` (regressor + fit) or ``"index"`` (``(k + 0.5) / n`` over the scanned range).
        how: one line saying how the slices were placed, for the summary and the Slicer module.
        mm_per_unit: the fitted body length of one unit of the scale (None when not fitted).
        reversed: the anatomy runs opposite to the file's z direction (its header is probably wrong).
    """

    positions: np.ndarray
    uncertainty: np.ndarray
    own: np.ndarray
    beyond: np.ndarray
    method: str
    how: str
    mm_per_unit: float | None = None
    reversed: bool = False


def _huber(r: np.ndarray) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= _HUBER, 0.5 * a**2, _HUBER * (a - 0.5 * _HUBER))


def _loss(params: np.ndarray, z: np.ndarray, own: np.ndarray, censored: np.ndarray, sign: float) -> float:
    offset, log_scale = params
    fitted = offset + sign * z / (MM_PER_UNIT * np.exp(log_scale))
    residual = own - fitted
    # Censored slices count only when the line puts them inside the scale's end they saturated at.
    residual = np.where(censored > 0, np.minimum(fitted - own, 0.0), residual)
    residual = np.where(censored < 0, np.maximum(fitted - own, 0.0), residual)
    return float(_huber(residual).sum() + 0.5 * (log_scale / _SCALE_PRIOR) ** 2 * _HUBER**2)


def _rank_correlation(z: np.ndarray, own: np.ndarray) -> float:
    """Spearman's rho of the estimates against z; 0 where it is undefined (all estimates equal), as
    ``scipy.stats.spearmanr``'s NaN compared: no evidence that the anatomy runs backwards."""
    if np.ptp(own) == 0 or np.ptp(z) == 0:
        return 0.0
    return spearman(z, own)


def _censoring(own: np.ndarray) -> np.ndarray:
    low, high = CENSOR_LEVELS
    return np.where(own >= high, 1, np.where(own <= low, -1, 0)).astype(np.int8)


def _uncertainty(z: np.ndarray, residual: np.ndarray, anchored: np.ndarray, floor: float) -> np.ndarray:
    """Standard error of a straight-line fit at every z, from the robust spread of the anchored residuals."""
    r, za = residual[anchored], z[anchored]
    spread = max(1.4826 * float(np.median(np.abs(r - np.median(r)))), _MIN_SPREAD) if len(r) else floor
    if len(za) < 2:
        return np.full(len(z), max(spread, floor))
    sxx = float(((za - za.mean()) ** 2).sum())
    leverage = 1.0 / len(za) + ((z - za.mean()) ** 2) / max(sxx, 1e-9)
    return spread * np.sqrt(leverage)


def fit_positions(own: np.ndarray, z_mm: np.ndarray, slice_error: float) -> SlicePlacement:
    """Fit the scan's positions from the regressor's per-slice estimates ``own`` at slice heights ``z_mm``.

    Args:
        own: the regressor's estimate of every canonical slice.
        z_mm: each slice's height along the body (canonical order: increasing towards superior).
        slice_error: typical error of one estimate alone (the regressor's), the uncertainty of a single slice.

    Raises:
        VolumeError: no slices, or ``own`` and ``z_mm`` of different lengths or not finite.
    """
    own = np.asarray(own, dtype=np.float64)
    z = np.asarray(z_mm, dtype=np.float64)
    if own.ndim != 1 or own.shape != z.shape or len(own) == 0:
        raise VolumeError(f"position fit needs one estimate per slice, got {own.shape} and {z.shape}")
    if not (np.isfinite(own).all() and np.isfinite(z).all()):
        raise VolumeError("position fit got non-finite slice estimates or heights")
    n = len(own)
    censored = _censoring(own)
    anchored = censored == 0
    if n == 1:
        return SlicePlacement(
            own.copy(),
            np.array([slice_error]),
            own.copy(),
            censored.copy(),
            "anatomy",
            f"one slice: placed from its own image alone (no neighbours to fit), ± {slice_error:.2f}",
        )
    z = z - z.min()
    span = float(z.max())
    if anchored.sum() < 2:
        return _unanchored(own, z, censored, slice_error)
    # scipy.optimize (OPTIMIZER_MODULE) costs ~0.3 CPU s to import: only scans placed by anatomy pay it, and
    # the engine imports it on a helper thread while it reads the CT. Spearman's rho is numpy's: scipy.stats
    # would cost 0.4 s more.
    from scipy import optimize

    sign = -1.0 if anchored.sum() >= 8 and _rank_correlation(z[anchored], own[anchored]) < -0.5 else 1.0
    fit_scale = n >= MIN_FIT_SLICES and span >= MIN_FIT_SPAN_MM
    start = np.array([float(np.median(own[anchored] - sign * z[anchored] / MM_PER_UNIT)), 0.0])
    bounds = [(None, None), (float(np.log(BODY_SCALE_RANGE[0])), float(np.log(BODY_SCALE_RANGE[1])))]
    if not fit_scale:
        bounds[1] = (0.0, 0.0)
    result = optimize.minimize(_loss, start, args=(z, own, censored, sign), method="L-BFGS-B", bounds=bounds)
    offset, log_scale = (float(v) for v in result.x)
    mm_per_unit = MM_PER_UNIT * float(np.exp(log_scale))
    positions = offset + sign * z / mm_per_unit
    uncertainty = _uncertainty(z, own - positions, anchored, slice_error)
    if fit_scale:
        how = (
            f"{n} slices over {span:.0f} mm: placed by a robust straight-line fit of the regressor's "
            f"estimates (body scale {mm_per_unit:.0f} mm per unit)"
        )
    else:
        how = (
            f"{n} slices over {span:.0f} mm: too few to fit a body size; offset fitted at the standard "
            f"{MM_PER_UNIT:.0f} mm per unit"
        )
    if sign < 0:
        how += "; the anatomy runs opposite to the file's z direction (check its orientation header)"
    return SlicePlacement(
        positions, uncertainty, own.copy(), np.zeros(n, dtype=np.int8), "anatomy", how, mm_per_unit, sign < 0
    )


def _unanchored(own: np.ndarray, z: np.ndarray, censored: np.ndarray, slice_error: float) -> SlicePlacement:
    """Almost every slice saturates at an end of the scale: the scan lies at or beyond that end.

    Positions are bounds at the standard body size: for a scan above the top, its lowest slice is put at
    the top and the others above it (and the mirror image below the bottom).
    """
    n = len(own)
    top = int((censored > 0).sum()) >= int((censored < 0).sum())
    if top:
        positions = CENSOR_LEVELS[1] + z / MM_PER_UNIT
        beyond = np.ones(n, dtype=np.int8)
        where = "at or above the top of the scale (lung bases)"
    else:
        positions = CENSOR_LEVELS[0] - (z.max() - z) / MM_PER_UNIT
        beyond = -np.ones(n, dtype=np.int8)
        where = "at or below the bottom of the scale (pelvis floor)"
    how = f"{n} slices, all estimated {where}: positions are bounds, nothing anchors them inside the range"
    return SlicePlacement(positions, np.full(n, np.nan), own.copy(), beyond, "anatomy", how)
