"""The gates a scan's slices pass before a flag means anything: the model's range, and the scan's domain.

**Range gate.** The model knows normal anatomy from the pelvis floor (0) to the lung bases (1). A slice
placed outside that range plus a margin (:class:`RangeGate`), a slice that saturates the regressor at an end
with nothing to anchor it (:attr:`SlicePlacement.beyond`), or a body section narrower than any adult abdomen
(a head, a neck, a limb) is *out of range*: it is never flagged, and the summary says so in one line
("112 of 164 slices lie above the model's range (chest): not scored"). A scan with no slice in range stops
with one clear line (:func:`require_in_range`): never "all flagged".

**Domain check.** When most in-range slices lie above their position's threshold, the scan is unlike the
normal data the model was calibrated on (another scanner, protocol or population): flagging it whole would
teach users to ignore the flags, so :func:`domain_check` withholds them and says why. Raw scores stay.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from AnomalyScoutLib.errors import ConfigError, VolumeError
from AnomalyScoutLib.position.fit import SlicePlacement

__all__ = [
    "DOMAIN_MESSAGE",
    "GateResult",
    "RangeGate",
    "apply_range_gate",
    "body_widths_mm",
    "domain_check",
    "require_in_range",
]

#: What the regions beyond each end are called in messages.
_REGION = {
    "above": "above the model's range (chest)",
    "below": "below the model's range (below the pelvis floor)",
    "narrow": "narrower than an adult abdomen (head, neck or limb)",
}
DOMAIN_MESSAGE = (
    "this scan does not look like the model's normal data ({share:.0%} of its in-range slices lie above "
    "their position's threshold); its flags are not reliable and were withheld: calibrate on normal "
    "scans of this kind with `anomalyscout calibrate`"
)
#: HU above which a voxel counts as body for the width measure (fat is about -100).
_BODY_HU = -300.0


@dataclass(frozen=True)
class RangeGate:
    """The model's range on the anatomical scale and how far beyond it a slice still counts as inside.

    Attributes:
        low, high: the scale's range the model was trained on (phantom: pelvis floor 0, lung bases 1).
        margin: slices up to this far beyond an end are in range (0.05 ≈ 16 mm of an adult).
        min_body_width_mm: a body section narrower than this (left-right) is no adult abdomen; the
            phantoms are 260-370 mm wide, an adult head 140-170 mm.
        domain_share: share of in-range slices above their threshold beyond which the scan is called
            unlike the calibration data.
    """

    low: float = 0.0
    high: float = 1.0
    margin: float = 0.05
    min_body_width_mm: float = 180.0
    domain_share: float = 0.5

    def __post_init__(self) -> None:
        if not self.low < self.high or self.margin < 0 or self.min_body_width_mm < 0:
            raise ConfigError(f"invalid range gate {self}")
        if not 0.0 < self.domain_share <= 1.0:
            raise ConfigError(f"domain_share must be in (0, 1], got {self.domain_share}")

    def describe(self) -> str:
        return f"{self.low:g} (pelvis floor) to {self.high:g} (lung bases) ± {self.margin:g}"


@dataclass(frozen=True)
class GateResult:
    """Which slices the model may judge.

    Attributes:
        in_range: bool ``(n,)``.
        reason: ``(n,)`` strings: ``""`` in range, else ``"above"``, ``"below"`` or ``"narrow"``.
        summary: one line about the out-of-range slices, None when every slice is in range.
    """

    in_range: np.ndarray
    reason: np.ndarray
    summary: str | None


def body_widths_mm(canonical_hu: np.ndarray, spacing_rc_mm: tuple[float, float]) -> np.ndarray:
    """Left-right width (mm) of the largest body section in every canonical slice, float64 ``(n,)``.

    Measured on a coarse copy (about 4 mm pixels) so that a 600-slice 512² CT takes a fraction of a second.
    """
    step = max(1, int(4.0 // max(spacing_rc_mm)))
    widths = np.zeros(canonical_hu.shape[0])
    for k in range(canonical_hu.shape[0]):
        body = np.asarray(canonical_hu[k, ::step, ::step]) > _BODY_HU
        labels, count = ndimage.label(body)
        if count == 0:
            continue
        largest = 1 + int(np.argmax(ndimage.sum_labels(body, labels, range(1, count + 1))))
        cols = np.flatnonzero((labels == largest).any(axis=0))
        widths[k] = (cols[-1] - cols[0] + 1) * step * spacing_rc_mm[1]
    return widths


def apply_range_gate(
    placement: SlicePlacement, body_width_mm: np.ndarray, gate: RangeGate | None = None
) -> GateResult:
    """Mark the slices outside the model's range; index placement trusts the position (nothing is above)."""
    gate = gate or RangeGate()
    positions = placement.positions
    n = len(positions)
    reason = np.full(n, "", dtype=object)
    reason[np.asarray(body_width_mm) < gate.min_body_width_mm] = "narrow"
    reason[(positions < gate.low - gate.margin) | (placement.beyond < 0)] = "below"
    reason[(positions > gate.high + gate.margin) | (placement.beyond > 0)] = "above"
    in_range = reason == ""
    parts = [f"{int((reason == key).sum())} {_REGION[key]}" for key in _REGION if (reason == key).any()]
    summary = None
    if parts:
        out = int((~in_range).sum())
        verb = "lies" if out == 1 else "lie"
        summary = (
            f"{out} of {n} slices {verb} outside the model's range: " + ", ".join(parts) + "; not scored"
        )
        if len(parts) == 1:
            key = next(key for key in _REGION if (reason == key).any())
            summary = f"{out} of {n} slices {verb} {_REGION[key]}: not scored"
    return GateResult(in_range, reason.astype(str), summary)


def require_in_range(result: GateResult, placement: SlicePlacement, gate: RangeGate | None = None) -> None:
    """Stop a scan that has no slice in the model's range, with one line that says where it lies.

    Raises:
        VolumeError: no slice is in range.
    """
    if result.in_range.any():
        return
    gate = gate or RangeGate()
    raise VolumeError(
        f"no slice of this scan lies in the model's range ({gate.describe()}): {result.summary}. "
        f"Slices {placement.how}"
    )


def domain_check(
    above_threshold: np.ndarray, in_range: np.ndarray, gate: RangeGate | None = None
) -> str | None:
    """The scan-domain message when most in-range slices lie above their threshold, else None.

    Args:
        above_threshold: bool ``(n,)``, the slice's score is above its position's calibrated threshold.
        in_range: bool ``(n,)`` from the range gate.
    """
    gate = gate or RangeGate()
    inside = np.asarray(in_range, dtype=bool)
    if inside.sum() < 2:
        return None
    share = float(np.asarray(above_threshold, dtype=bool)[inside].mean())
    return DOMAIN_MESSAGE.format(share=share) if share > gate.domain_share else None
