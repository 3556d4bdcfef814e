"""Intensities that no normal tissue reaches: metal, which the networks' HU window cannot show them.

The networks see CT through a soft-tissue window (:class:`~AnomalyScoutLib.preprocessing.HUWindow`) that is
clipped at its top, so a 3000 HU surgical clip and 700 HU bone are the same value to them: the
reconstruction residual cannot tell metal from bone, and metal (a clip, a stent, a prosthesis) is the first
example of what a segmentation model fails on. The envelope looks at the HU the window throws away.

It is fitted on the same held-out normal volumes as the score calibration (``anomalyscout calibrate``): the
highest HU a body voxel reaches in them, plus a margin, and never less than :data:`FLOOR_HU`, the top of
normal human tissue (dense cortical bone reads up to ~1900 HU on thin-slice CT). The floor is what keeps a
model fitted on phantoms, whose bone is lighter than real bone, from flagging the real bone of every scan;
it also means that metal drawn below it by partial volume (a thin stent strut at half a voxel) is left to
the residual. A slice with at least ``min_area_mm2`` of body above the envelope is flagged whatever its
residual score says, and those voxels are drawn at the top of the heatmap.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from AnomalyScoutLib.errors import ModelFileError
from AnomalyScoutLib.preprocessing import body_mask

__all__ = ["FLOOR_HU", "METADATA_KEY", "IntensityEnvelope", "highest_body_hu"]

#: Where the envelope lives in a model file's metadata.
METADATA_KEY = "intensity_envelope"
#: The envelope is never below the densest normal tissue of real CT (cortical bone, up to ~1900 HU).
FLOOR_HU = 2000.0
#: Added to the highest normal HU seen: noise and bone density vary beyond a handful of normal volumes.
MARGIN_HU = 100.0
#: Body area above the envelope that flags a slice: a few voxels of real CT, one voxel of a 3 mm grid, so
#: that a single hot voxel of a noisy reconstruction kernel does not.
MIN_AREA_MM2 = 2.0


@dataclass(frozen=True)
class IntensityEnvelope:
    """The HU above which a body voxel is not normal tissue, and how much of it flags a slice.

    Attributes:
        high_hu: body voxels above this are beyond normal.
        min_area_mm2: body area beyond normal that flags a slice.
        normal_max_hu: the highest body HU of the normal volumes it was fitted on (``None``: set by hand).
        volumes: how many normal volumes it was fitted on.
        floor_hu: the lowest value :meth:`fit` was allowed to give ``high_hu``.
    """

    high_hu: float
    min_area_mm2: float = MIN_AREA_MM2
    normal_max_hu: float | None = None
    volumes: int = 0
    floor_hu: float = FLOOR_HU

    def __post_init__(self) -> None:
        area_ok = math.isfinite(self.min_area_mm2) and self.min_area_mm2 > 0
        if not (math.isfinite(self.high_hu) and area_ok):
            raise ValueError(
                f"intensity envelope needs a finite high_hu and min_area_mm2 > 0, got {self.high_hu}, "
                f"{self.min_area_mm2}"
            )

    @classmethod
    def fit(
        cls,
        normal_max_hu: Iterable[float],
        *,
        floor_hu: float = FLOOR_HU,
        margin_hu: float = MARGIN_HU,
        min_area_mm2: float = MIN_AREA_MM2,
    ) -> IntensityEnvelope:
        """The envelope of normal volumes, given the highest body HU of each (:func:`highest_body_hu`).

        Raises:
            ValueError: no finite maximum (no normal volume with a body).
        """
        highest = [float(v) for v in normal_max_hu if math.isfinite(float(v))]
        if not highest:
            raise ValueError("the intensity envelope needs at least one normal volume with a body")
        normal_max = max(highest)
        return cls(max(floor_hu, normal_max + margin_hu), min_area_mm2, normal_max, len(highest), floor_hu)

    def beyond(self, hu: np.ndarray, body: np.ndarray) -> np.ndarray:
        """Boolean mask of the body voxels above the envelope (any shape; ``hu`` and ``body`` alike)."""
        return body & (hu > self.high_hu)

    def area_mm2(self, beyond: np.ndarray, pixel_area_mm2: float) -> np.ndarray:
        """Per slice (first axis) of a :meth:`beyond` mask, the area beyond normal in mm²."""
        return beyond.reshape(len(beyond), -1).sum(axis=1) * float(pixel_area_mm2)

    def flags(self, area_mm2: np.ndarray) -> np.ndarray:
        """Which slices have enough of their body beyond normal to be flagged."""
        return np.asarray(area_mm2) >= self.min_area_mm2

    def to_json(self) -> dict[str, Any]:
        return {
            "high_hu": self.high_hu,
            "min_area_mm2": self.min_area_mm2,
            "normal_max_hu": self.normal_max_hu,
            "volumes": self.volumes,
            "floor_hu": self.floor_hu,
        }

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> IntensityEnvelope | None:
        """The envelope stored in a model's metadata, or ``None`` for a model calibrated before it existed.

        Raises:
            ModelFileError: the entry is there but malformed.
        """
        data = metadata.get(METADATA_KEY)
        if data is None:
            return None
        try:
            normal_max = data.get("normal_max_hu")
            return cls(
                float(data["high_hu"]),
                float(data["min_area_mm2"]),
                None if normal_max is None else float(normal_max),
                int(data.get("volumes", 0)),
                float(data.get("floor_hu", FLOOR_HU)),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f"metadata[{METADATA_KEY!r}] is malformed: {error}") from None


def highest_body_hu(canonical_hu: np.ndarray, chunk: int = 32) -> float:
    """The highest HU inside the body of a canonical volume (``-inf`` without a body): what :meth:`fit` takes.

    Body masks are made ``chunk`` slices at a time, as the scorer makes them (the mask of a whole large
    volume would not fit in memory), so the envelope is fitted on the voxels that scoring compares with it.
    """
    highest = -math.inf
    for k0 in range(0, len(canonical_hu), chunk):
        hu = np.asarray(canonical_hu[k0 : k0 + chunk], dtype=np.float32)
        body = body_mask(hu)
        if body.any():
            highest = max(highest, float(hu[body].max()))
    return highest
