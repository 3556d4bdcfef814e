"""Positions of a canonical scan's slices: ``"anatomy"`` (regressor + fit) or ``"index"``.

``"index"`` is the historical definition ``(k + 0.5) / n`` over the scanned range: exact and reproducible,
right only for a scan that runs from the pelvis floor to the lung bases. ``"anatomy"`` asks the model's
body-part regressor where each slice lies and fits all slices together (:mod:`.fit`). A model file without
a regressor can only place by index, and says so (:data:`NO_REGRESSOR_NOTE`).

Every user of positions places through here, so that ``score``, ``calibrate``, ``rank`` and the benchmark's
product row agree: :func:`resolve_method` says what ``--position`` means for a model, :func:`place_slices`
places, :func:`place_and_gate` places and marks the slices outside the model's range (:mod:`.gate`).
"""

from __future__ import annotations

import numpy as np
import torch

from AnomalyScoutLib.errors import ConfigError, VolumeError
from AnomalyScoutLib.position.fit import SlicePlacement, fit_positions
from AnomalyScoutLib.position.gate import GateResult, RangeGate, apply_range_gate, body_widths_mm
from AnomalyScoutLib.position.network import PositionRegressor, regressor_input

__all__ = [
    "PLACEMENT_METHODS",
    "NO_REGRESSOR_NOTE",
    "estimate_slices",
    "place_and_gate",
    "place_slices",
    "resolve_method",
]

#: ``auto``: anatomy when the model holds a regressor, else index.
PLACEMENT_METHODS: tuple[str, ...] = ("auto", "anatomy", "index")
NO_REGRESSOR_NOTE = (
    "this model file has no position regressor: slices are placed by index over the scanned range, which "
    "is right only for a scan from the pelvis floor to the lung bases (add one with "
    "`anomalyscout attach-position`)"
)
#: Slices per regressor batch (bounds memory on a 600-slice 512² CT).
_BATCH = 64


def estimate_slices(
    regressor: PositionRegressor, canonical_hu: np.ndarray, spacing_rc_mm: tuple[float, float]
) -> np.ndarray:
    """The regressor's estimate of every canonical slice on its own, float64 ``(n,)`` (CPU, no gradients)."""
    out = np.empty(canonical_hu.shape[0], dtype=np.float64)
    with torch.no_grad():
        for k0 in range(0, canonical_hu.shape[0], _BATCH):
            batch = np.asarray(canonical_hu[k0 : k0 + _BATCH], dtype=np.float32)
            out[k0 : k0 + len(batch)] = regressor(
                regressor_input(batch, spacing_rc_mm, regressor.config)
            ).numpy()
    return out


def resolve_method(method: str, regressor: PositionRegressor | None) -> str:
    """What ``method`` places by for a model with (or without) a regressor: ``"anatomy"`` or ``"index"``.

    Known before any slice is placed, so that a calibration can be filed and a score cache keyed by it.

    Raises:
        ConfigError: unknown method, or ``"anatomy"`` asked of a model without a regressor.
    """
    if method not in PLACEMENT_METHODS:
        raise ConfigError(f"position method {method!r} is not one of {', '.join(PLACEMENT_METHODS)}")
    if method == "anatomy" and regressor is None:
        raise ConfigError(f"--position anatomy: {NO_REGRESSOR_NOTE}")
    return "index" if method == "index" or regressor is None else "anatomy"


def place_slices(
    canonical_hu: np.ndarray,
    spacing_kji: tuple[float, float, float],
    regressor: PositionRegressor | None,
    method: str = "auto",
) -> SlicePlacement:
    """Where every canonical slice lies on the model's scale, and how that was decided.

    Raises:
        ConfigError: unknown method, or ``"anatomy"`` asked of a model without a regressor.
        VolumeError: not a (slices, rows, cols) array.
    """
    resolved = resolve_method(method, regressor)
    if canonical_hu.ndim != 3 or canonical_hu.shape[0] == 0:
        raise VolumeError(
            f"slice positions need a (slices, rows, cols) array, got shape {canonical_hu.shape}"
        )
    n = canonical_hu.shape[0]
    if resolved == "index" or regressor is None:
        how = "placed by index over the scanned range, (k + 0.5) / n"
        if method == "auto":
            how = NO_REGRESSOR_NOTE
        return SlicePlacement(
            (np.arange(n) + 0.5) / n,
            np.full(n, np.nan),
            np.full(n, np.nan),
            np.zeros(n, np.int8),
            "index",
            how,
        )
    own = estimate_slices(regressor, canonical_hu, spacing_kji[1:])
    return fit_positions(own, np.arange(n) * float(spacing_kji[0]), regressor.config.slice_error)


def place_and_gate(
    canonical_hu: np.ndarray,
    spacing_kji: tuple[float, float, float],
    regressor: PositionRegressor | None,
    method: str = "auto",
    gate: RangeGate | None = None,
) -> tuple[SlicePlacement, GateResult]:
    """:func:`place_slices`, then the range gate on those positions and on each slice's body width.

    The one placement of ``score``, ``calibrate`` and ``rank``: what one of them judges out of range, the
    others skip too. A scan with no slice in range is not refused here; each caller decides (``score``
    stops, ``calibrate`` skips the volume, ``rank`` reports the case as failed).

    Raises:
        ConfigError, VolumeError: as :func:`place_slices`.
    """
    placement = place_slices(canonical_hu, spacing_kji, regressor, method)
    widths = body_widths_mm(canonical_hu, (float(spacing_kji[1]), float(spacing_kji[2])))
    return placement, apply_range_gate(placement, widths, gate)
