"""Synthetic anomalies in real anatomy: the phantom's inserters applied to a real CT via a surrogate anatomy.

The phantom's inserters (:func:`AnomalyScoutLib.phantom.anomalies.insert_anomaly`) place each anomaly from a
tissue map (liver for lesions, soft tissue inside the peritoneal cavity for clips and fluid) and a few body
measures. A real scan has none of that, so :func:`surrogate_anatomy` derives one, in documented steps:

- body: the engine's ``preprocessing.body_mask``;
- liver: the label map that comes with the scan (TotalSegmentator's output for the fixture);
- fat: body voxels of −200..−30 HU; gas: body voxels below −200 HU; bone: above 250 HU; the rest "muscle"
  (generic soft tissue);
- peritoneal cavity: the body eroded in-plane by ``wall_mm`` (15 mm: skin, fat and muscle wall), minus bone;
- front of the spine (for the retroperitoneum that ascites must avoid): the 5th percentile of the ``y`` of
  bone voxels within 20 mm of the body's midline, posterior half.

Lesions therefore land inside the real liver, clips (with streaks) in soft tissue inside the cavity, and
fluid around the liver and in the peritoneum — exactly as on the phantom, but in real anatomy.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from AnomalyScoutLib.phantom.anatomy import Anatomy, PhantomGrid, Tissue
from AnomalyScoutLib.phantom.anomalies import insert_anomaly
from AnomalyScoutLib.preprocessing import body_mask

__all__ = ["estimate_noise_hu", "insert_real_anomaly", "surrogate_anatomy"]


def surrogate_anatomy(
    canonical_hu: np.ndarray,
    spacing_kji: tuple[float, float, float],
    liver: np.ndarray,
    wall_mm: float = 15.0,
) -> Anatomy:
    """The tissue map and body measures the phantom's inserters need, derived from a real canonical CT."""
    if liver.shape != canonical_hu.shape or not liver.any():
        raise ValueError("the liver mask must have the volume's shape and contain the liver")
    grid = PhantomGrid(
        shape_zyx=canonical_hu.shape, spacing_xyz=(spacing_kji[2], spacing_kji[1], spacing_kji[0])
    )
    body = body_mask(canonical_hu)
    tissue = np.full(canonical_hu.shape, Tissue.AIR, dtype=np.uint8)
    tissue[body] = Tissue.MUSCLE
    tissue[body & (canonical_hu > -200) & (canonical_hu < -30)] = Tissue.FAT
    tissue[body & (canonical_hu <= -200)] = Tissue.GI_GAS
    bone = body & (canonical_hu > 250)
    tissue[bone] = Tissue.BONE_CORTICAL
    tissue[liver] = Tissue.LIVER
    iterations = max(1, int(round(wall_mm / min(spacing_kji[1:]))))
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    cavity = ndimage.binary_erosion(body, in_plane, iterations=iterations) & ~bone
    x, y = grid.x[0, 0], grid.y[0, :, 0]
    body_x = float((body.sum(axis=(0, 1)) * x).sum() / body.sum())
    body_y = float((body.sum(axis=(0, 2)) * y).sum() / body.sum())
    _, rows, cols = np.nonzero(
        bone & (np.abs(x - body_x) < 20.0)[None, None, :] & (y > body_y)[None, :, None]
    )
    spine_front = float(np.percentile(y[rows], 5)) if rows.size else body_y + 40.0
    return Anatomy(
        grid=grid, tissue=tissue, body=body, cavity=cavity, habitus={"spine_front_y_mm": spine_front}
    )


def estimate_noise_hu(canonical_hu: np.ndarray, liver: np.ndarray) -> float:
    """CT noise in the liver: robust spread of the residual to a 3×3 in-plane median (≈ σ of the noise)."""
    residual = canonical_hu - ndimage.median_filter(canonical_hu, size=(1, 3, 3))
    values = residual[liver]
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def insert_real_anomaly(
    kind: str, canonical_hu: np.ndarray, anatomy: Anatomy, seed: int, noise_hu: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(new volume, changed-voxel mask)`` with one anomaly of ``kind`` (``tumour``, ``metal``, ``ascites``,
    ``blob``, ``deformation``) placed by the phantom's inserter with a generator seeded by ``seed``.

    The inserter returns whole HU clipped to [-1024, 3071]; the input is brought to the same form first, so
    that only the anomaly's voxels differ (real scans often store air below -1024).
    """
    hu = np.clip(np.rint(canonical_hu), -1024.0, 3071.0).astype(np.float32)
    new, changed, _ = insert_anomaly(kind, hu, anatomy, np.random.default_rng(seed), noise_hu)
    return new, changed
