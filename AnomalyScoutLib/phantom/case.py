"""One synthetic CT case: normal anatomy rendered to Hounsfield units, then the requested anomalies.

Randomness comes from independent streams derived from the seed (anatomy, rendering, one per anomaly), so that
``make_phantom(seed, anomalies=("tumour",))`` is the normal volume ``make_phantom(seed)`` with only the voxels
of its anomaly mask changed: the tests rely on that, and so can benchmarks that compare a case with its normal
twin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.io.volume import Volume
from AnomalyScoutLib.phantom.anatomy import Anatomy, PhantomGrid, Tissue, build_anatomy
from AnomalyScoutLib.phantom.anomalies import ANOMALY_CODES, insert_anomaly
from AnomalyScoutLib.phantom.noise import ct_noise, smooth_field

__all__ = [
    "DEFAULT_SHAPE_XYZ",
    "TISSUE_HU",
    "InsertedAnomaly",
    "PhantomCase",
    "auto_spacing",
    "make_phantom",
]

DEFAULT_SHAPE_XYZ: tuple[int, int, int] = (256, 256, 100)
_FIELD_OF_VIEW_MM = 400.0
_SCAN_LENGTH_MM = 330.0

#: Per tissue: (mean HU without contrast, mean HU in portal-venous phase, spread of the mean between cases,
#: texture amplitude in HU). A case's contrast enhancement e in [0, 1] mixes the two means.
TISSUE_HU: dict[Tissue, tuple[float, float, float, float]] = {
    Tissue.AIR: (-1000.0, -1000.0, 0.0, 0.0),
    Tissue.FAT: (-100.0, -100.0, 6.0, 12.0),
    Tissue.MUSCLE: (40.0, 50.0, 6.0, 14.0),
    Tissue.LIVER: (55.0, 110.0, 7.0, 6.0),
    Tissue.LIVER_VESSEL: (40.0, 170.0, 8.0, 6.0),
    Tissue.SPLEEN: (45.0, 115.0, 6.0, 5.0),
    Tissue.KIDNEY_CORTEX: (32.0, 180.0, 10.0, 8.0),
    Tissue.KIDNEY_MEDULLA: (30.0, 135.0, 10.0, 8.0),
    Tissue.RENAL_SINUS: (-60.0, -60.0, 10.0, 20.0),
    Tissue.PANCREAS: (40.0, 95.0, 7.0, 12.0),
    Tissue.GI_WALL: (35.0, 85.0, 8.0, 10.0),
    Tissue.GI_FLUID: (10.0, 10.0, 8.0, 15.0),
    Tissue.GI_GAS: (-990.0, -990.0, 10.0, 10.0),
    Tissue.STOOL: (-30.0, -30.0, 20.0, 40.0),
    Tissue.BLADDER: (8.0, 8.0, 4.0, 2.0),
    Tissue.ARTERY: (42.0, 200.0, 15.0, 4.0),
    Tissue.VEIN: (40.0, 150.0, 12.0, 5.0),
    Tissue.BONE_CORTICAL: (700.0, 700.0, 80.0, 150.0),
    Tissue.BONE_CANCELLOUS: (230.0, 230.0, 30.0, 40.0),
    Tissue.DISC: (85.0, 90.0, 8.0, 8.0),
    Tissue.CSF: (12.0, 12.0, 4.0, 3.0),
    Tissue.LUNG: (-860.0, -860.0, 20.0, 20.0),
    Tissue.LUNG_VESSEL: (-100.0, -100.0, 20.0, 30.0),
    Tissue.HEART: (40.0, 130.0, 10.0, 10.0),
    Tissue.GALLBLADDER: (10.0, 10.0, 4.0, 2.0),
    Tissue.TABLE: (200.0, 200.0, 40.0, 10.0),
    Tissue.FAT_STRAND: (20.0, 50.0, 10.0, 10.0),
}

_STREAM_ANATOMY, _STREAM_RENDER, _STREAM_ANOMALY = 0, 1, 2


@dataclass(frozen=True)
class InsertedAnomaly:
    """What one inserted anomaly is, where it went, and the parameters drawn for it."""

    kind: str
    code: int
    slices: tuple[int, ...]
    voxels: int
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PhantomCase:
    """A synthetic case.

    Attributes:
        seed: the seed that reproduces the case exactly.
        volume: the CT in HU (float32, whole numbers), canonical axial order, identity direction.
        labels: uint8 label map on the same grid (codes in :data:`anatomy.LABEL_NAMES`).
        anomaly_mask: uint8, 0 where the volume equals the normal case of the same seed, else the code of the
            anomaly that changed the voxel (:data:`anomalies.ANOMALY_CODES`; a later anomaly wins an overlap).
        anomalies: one record per inserted anomaly, in insertion order.
        habitus: the seeded body measures and rendering parameters.
    """

    seed: int
    volume: Volume
    labels: np.ndarray
    anomaly_mask: np.ndarray
    anomalies: tuple[InsertedAnomaly, ...]
    habitus: dict[str, float]

    @property
    def slice_labels(self) -> np.ndarray:
        """Per slice (canonical index k): True when the slice holds any anomalous voxel."""
        return self.anomaly_mask.any(axis=(1, 2))


def auto_spacing(shape_xyz: Sequence[int]) -> tuple[float, float, float]:
    """Spacing giving a 400 mm field of view and a 330 mm pelvis-to-lung-base length for ``shape_xyz``."""
    nx, ny, nz = shape_xyz
    return (_FIELD_OF_VIEW_MM / nx, _FIELD_OF_VIEW_MM / ny, _SCAN_LENGTH_MM / nz)


def _render(
    anatomy: Anatomy, rng: np.random.Generator, noise_hu: float | None, enhancement: float | None
) -> tuple[np.ndarray, dict[str, float]]:
    """Tissue map -> HU: per-case tissue means, organ texture, partial-volume blur, CT noise, integer HU."""
    grid = anatomy.grid
    if enhancement is None:
        enhancement = float(rng.uniform(0.0, 1.0))
    means = np.zeros(len(Tissue), dtype=np.float32)
    textures = np.zeros(len(Tissue), dtype=np.float32)
    for tissue, (plain, portal, spread, texture) in TISSUE_HU.items():
        means[tissue] = plain + enhancement * (portal - plain) + spread * rng.standard_normal()
        textures[tissue] = texture
    coarse = smooth_field(rng, grid.shape_zyx, grid.spacing_zyx, 6.0)
    fine = smooth_field(rng, grid.shape_zyx, grid.spacing_zyx, 1.5)
    hu = means[anatomy.tissue] + textures[anatomy.tissue] * (0.5 * coarse + 0.85 * fine)
    # Partial volume: the scanner's in-plane PSF (~0.7 mm) and the slice profile (about half the thickness).
    sx, sy, _ = grid.spacing_xyz
    sigma = (0.45, max(0.6, 0.7 / sy), max(0.6, 0.7 / sx))
    hu = ndimage.gaussian_filter(hu, sigma)
    if noise_hu is None:
        noise_hu = float(
            8.0 + 10.0 * (anatomy.habitus["half_width_mm"] - 130.0) / 55.0 + rng.uniform(0.0, 3.0)
        )
    hu += ct_noise(rng, grid.shape_zyx, (sx, sy), noise_hu)
    rendering = {"noise_hu": noise_hu, "enhancement": enhancement}
    return np.clip(np.rint(hu), -1024.0, 3071.0).astype(np.float32), rendering


def make_phantom(
    seed: int,
    *,
    shape_xyz: Sequence[int] = DEFAULT_SHAPE_XYZ,
    spacing_xyz: Sequence[float] | None = None,
    anomalies: Sequence[str] = (),
    noise_hu: float | None = None,
    enhancement: float | None = None,
) -> PhantomCase:
    """Generate one case, normal or with ``anomalies`` (names from :data:`anomalies.ANOMALY_CODES`).

    Args:
        seed: non-negative integer; the same seed and arguments give the same case, voxel for voxel.
        shape_xyz: volume size (x, y, z) in voxels, in SimpleITK order.
        spacing_xyz: voxel size in mm; ``None`` picks :func:`auto_spacing` (400 mm field of view). The field
        of
            view must be at least 240 mm wide and deep.
        anomalies: kinds to insert, in order; the same kind may repeat.
        noise_hu: standard deviation of the CT noise; ``None`` draws 8-21 HU growing with the patient's size.
        enhancement: contrast enhancement, 0 = no contrast (liver ~55 HU), 1 = portal-venous phase (liver
            ~110 HU, aorta ~200 HU); ``None`` draws it uniformly from [0, 1].

    Raises:
        ConfigError: a bad seed, shape, spacing, noise level or anomaly name.
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if len(shape_xyz) != 3 or min(shape_xyz) < 8:
        raise ConfigError(f"shape must be three sizes (x, y, z) of at least 8 voxels, got {tuple(shape_xyz)}")
    unknown = [name for name in anomalies if name not in ANOMALY_CODES]
    if unknown:
        raise ConfigError(f"unknown anomaly kind(s) {unknown}; choose from {sorted(ANOMALY_CODES)}")
    if noise_hu is not None and not 0.0 <= noise_hu <= 200.0:
        raise ConfigError(f"noise_hu must be between 0 and 200 HU, got {noise_hu}")
    if enhancement is not None and not 0.0 <= enhancement <= 1.0:
        raise ConfigError(f"enhancement must be between 0 and 1, got {enhancement}")
    shape = tuple(int(n) for n in shape_xyz)
    spacing = auto_spacing(shape) if spacing_xyz is None else tuple(float(s) for s in spacing_xyz)
    grid = PhantomGrid(shape_zyx=(shape[2], shape[1], shape[0]), spacing_xyz=spacing)  # type: ignore[arg-type]
    anatomy = build_anatomy(grid, np.random.default_rng([int(seed), _STREAM_ANATOMY]))
    render_rng = np.random.default_rng([int(seed), _STREAM_RENDER])
    hu, rendering = _render(anatomy, render_rng, noise_hu, enhancement)
    mask = np.zeros(grid.shape_zyx, dtype=np.uint8)
    records = []
    for index, kind in enumerate(anomalies):
        rng = np.random.default_rng([int(seed), _STREAM_ANOMALY, index])
        hu, changed, parameters = insert_anomaly(kind, hu, anatomy, rng, rendering["noise_hu"])
        mask[changed] = ANOMALY_CODES[kind]
        slices = tuple(int(k) for k in np.flatnonzero(changed.any(axis=(1, 2))))
        records.append(InsertedAnomaly(kind, ANOMALY_CODES[kind], slices, int(changed.sum()), parameters))
    volume = Volume(
        array_zyx=hu,
        spacing_xyz=spacing,  # type: ignore[arg-type]
        origin_xyz=grid.origin_xyz,
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        source=f"phantom(seed={seed})",
        modality="CT",
    )
    habitus = dict(anatomy.habitus, **rendering)
    return PhantomCase(int(seed), volume, anatomy.labels, mask, tuple(records), habitus)
