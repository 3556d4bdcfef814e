"""Anomalies inserted into a rendered normal case, each with the exact set of voxels it changed.

Every inserter takes the normal HU volume and returns a new one; :func:`insert_anomaly` then rounds, clips
and defines the anomaly's mask as **the voxels whose value changed** (``new != old``), so "outside the mask
the case equals its normal twin" holds by construction. Inserters keep the scanner noise of the underlying
image (they add smooth changes, or draw fresh CT noise where they replace tissue) so that an anomaly is not
betrayed by a noise-free patch.

Kinds and what their mask covers:

- ``tumour``: a hypo- or hyperdense lobulated liver lesion (6-30 mm radius, inside the liver); mask =
  lesion.
- ``metal``: a surgical clip (anywhere in the abdominal cavity) or an aortic stent, ~3000 HU, with streak
  artefacts made by filtered back-projection of a beam-hardening and photon-starvation sinogram error; mask
  = the metal plus every body voxel of its slices where the streaks change the value by more than 25 HU (the
  artefact is soft-thresholded at 25 HU, so the streak region ends without a step).
- ``ascites``: fluid (0-20 HU) in the peritoneal cavity: a layer along the abdominal wall, around the liver
  and spleen and deeper in the pelvis; the intraperitoneal contents are first pushed inwards (by 0.7 x the
  layer at the wall, fading to nothing at 2 layers' depth) so that the fluid borders displaced organs and
  bowel; mask = the fluid, its blurred edge and every displaced voxel that changed.
- ``blob``: MOOD-style intensity blob (+-50..300 HU) anywhere in the body; mask = the blob.
- ``deformation``: MOOD-style local radial expansion or contraction of the anatomy in a ball of 15-40 mm;
  mask = the voxels the warp changed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage

from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.phantom.anatomy import Anatomy, PhantomGrid, Tissue
from AnomalyScoutLib.phantom.noise import ct_noise, smooth_field

__all__ = ["ANOMALY_CODES", "insert_anomaly"]

#: Codes written into the anomaly mask, one per kind.
ANOMALY_CODES: dict[str, int] = {"tumour": 1, "metal": 2, "ascites": 3, "blob": 4, "deformation": 5}

METAL_HU = 3000.0
STREAK_THRESHOLD_HU = 25.0

Inserter = Callable[[np.ndarray, Anatomy, np.random.Generator, float], tuple[np.ndarray, dict[str, Any]]]


def _points_mm(grid: PhantomGrid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return grid.x, grid.y, grid.z


def _pick_centre(rng: np.random.Generator, region: np.ndarray, grid: PhantomGrid, depth_mm: float) -> tuple:
    """A random voxel of ``region`` at least ``depth_mm`` from its border (the deepest one if none is)."""
    if not region.any():
        raise ConfigError("the phantom has no room for this anomaly (region empty): use a larger volume")
    depth = ndimage.distance_transform_edt(region, sampling=grid.spacing_zyx)
    candidates = np.flatnonzero(region & (depth >= depth_mm))
    index = int(rng.choice(candidates)) if candidates.size else int(depth.argmax())
    k, j, i = np.unravel_index(index, grid.shape_zyx)
    x, y, z = _points_mm(grid)
    return (float(x.ravel()[i]), float(y.ravel()[j]), float(z.ravel()[k])), float(depth.ravel()[index])


def _ellipsoid_level(grid: PhantomGrid, centre: tuple, radii: tuple) -> np.ndarray:
    x, y, z = _points_mm(grid)
    return np.sqrt(((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2
                   + ((z - centre[2]) / radii[2]) ** 2)  # fmt: skip


def _soft_blob(
    grid: PhantomGrid, rng: np.random.Generator, centre: tuple, radius: float, edge: float
) -> np.ndarray:
    """Weight in [0, 1]: 1 inside a lobulated ellipsoid, exactly 0 beyond ``edge`` (relative radius)."""
    radii = tuple(radius * rng.uniform(0.75, 1.25) for _ in range(3))
    lobes = smooth_field(rng, grid.shape_zyx, grid.spacing_zyx, max(radius / 2.0, 2.0))
    level = _ellipsoid_level(grid, centre, radii) + 0.12 * lobes
    return np.clip((1.0 - level) / edge + 1.0, 0.0, 1.0) * (level < 1.0 + edge)


def _minimum_radius(grid: PhantomGrid) -> float:
    """Lesions below about a voxel would vanish in partial volume: keep them visible on coarse grids."""
    return max(6.0, 1.2 * max(grid.spacing_xyz[:2]))


def _tumour(hu: np.ndarray, anatomy: Anatomy, rng: np.random.Generator, noise_hu: float):
    grid = anatomy.grid
    liver = np.isin(anatomy.tissue, (Tissue.LIVER, Tissue.LIVER_VESSEL))
    radius = float(np.exp(rng.uniform(np.log(6.0), np.log(30.0))))
    radius = max(radius, _minimum_radius(grid))
    centre, depth = _pick_centre(rng, liver, grid, 0.6 * radius)
    radius = min(radius, max(depth / 0.6, _minimum_radius(grid)))
    weight = _soft_blob(grid, rng, centre, radius, edge=0.25) * liver
    liver_hu = float(np.median(hu[liver]))
    hypodense = rng.uniform() < 0.7
    target = rng.uniform(10.0, 60.0) if hypodense else liver_hu + rng.uniform(30.0, 70.0)
    texture = rng.uniform(4.0, 10.0) * smooth_field(rng, grid.shape_zyx, grid.spacing_zyx, 2.5)
    new = hu + weight * (target - liver_hu + texture)
    density = "hypo" if hypodense else "hyper"
    return new, {"centre_xyz_mm": list(centre), "radius_mm": radius, "density": density,
                 "lesion_hu": float(target), "liver_hu": liver_hu}  # fmt: skip


def _streaks(
    metal_fraction: np.ndarray, spacing_xy: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    """Streak image of one slice: filtered back-projection of the sinogram error metal causes.

    Beam hardening makes the measured line integral grow less than linearly with the metal path length p
    (error ~ -p^2: dark bands along the longest paths, bright rays beside them); photon starvation adds noise
    proportional to p. Projections are computed only for the metal pixels, so a slice costs one
    back-projection.
    """
    ny, nx = metal_fraction.shape
    pixel = float(min(spacing_xy))
    x = (np.arange(nx) - (nx - 1) / 2) * spacing_xy[0]
    y = (np.arange(ny) - (ny - 1) / 2) * spacing_xy[1]
    rows, cols = np.nonzero(metal_fraction > 0)
    weights = metal_fraction[rows, cols] * pixel
    half = np.hypot(x[-1], y[-1]) + pixel
    bins = np.arange(-half, half + pixel, pixel)
    centres = 0.5 * (bins[1:] + bins[:-1])
    angles = np.linspace(0.0, np.pi, 360, endpoint=False)
    frequency = np.fft.fftfreq(2 * centres.size)
    # Ramp with a Hann window, as scanners' standard kernels: streaks a few mm wide, no view-aliasing moire.
    ramp = np.abs(frequency) * 0.5 * (1.0 + np.cos(2.0 * np.pi * frequency))
    image = np.zeros((ny, nx))
    for angle in angles:
        s_metal = x[cols] * np.cos(angle) + y[rows] * np.sin(angle)
        path, _ = np.histogram(s_metal, bins=bins, weights=weights)
        error = -(path**2) + 0.3 * path * rng.standard_normal(path.size)
        error = ndimage.gaussian_filter1d(error, 0.8 / pixel)  # ~0.8 mm detector blur
        filtered = np.fft.ifft(np.fft.fft(error, 2 * centres.size) * ramp).real[: centres.size]
        s_image = x[None, :] * np.cos(angle) + y[:, None] * np.sin(angle)
        image += np.interp(s_image, centres, filtered)
    return image


def _metal(hu: np.ndarray, anatomy: Anatomy, rng: np.random.Generator, noise_hu: float):
    grid = anatomy.grid
    voxel = min(grid.spacing_xyz[:2])
    aorta = anatomy.tissue == Tissue.ARTERY
    stent = bool(rng.uniform() < 0.4 and aorta.sum() > 20)
    if stent:
        centre, _ = _pick_centre(rng, aorta, grid, 0.0)
        x, y, z = _points_mm(grid)
        radius = 11.0
        length = rng.uniform(40.0, 80.0)
        distance = np.abs(np.hypot(x - centre[0], y - centre[1]) - radius)
        fraction = (
            np.clip(1.0 - distance / max(voxel, 1.5), 0.0, 1.0) * 0.5 * (np.abs(z - centre[2]) < length / 2)
        )
        strength = rng.uniform(60.0, 150.0)
        parameters = {"device": "stent", "centre_xyz_mm": list(centre), "length_mm": length}
    else:
        soft = anatomy.cavity & np.isin(anatomy.tissue, (Tissue.FAT, Tissue.GI_WALL, Tissue.LIVER))
        centre, _ = _pick_centre(rng, soft, grid, 5.0)
        length = rng.uniform(6.0, 12.0)
        radii = (max(1.5, 0.5 * voxel), max(1.5, 0.5 * voxel), max(length / 2, 0.6 * grid.spacing_xyz[2]))
        level = _ellipsoid_level(grid, centre, radii)
        fraction = np.clip(1.5 - level, 0.0, 1.0)
        strength = rng.uniform(100.0, 300.0)
        parameters = {"device": "clip", "centre_xyz_mm": list(centre), "length_mm": length}
    new = hu * (1.0 - fraction) + METAL_HU * fraction
    for k in np.flatnonzero(fraction.any(axis=(1, 2))):
        streaks = _streaks(fraction[k], grid.spacing_xyz[:2], rng)
        # Scale so that the strongest streaks 10-50 mm from the metal reach the drawn strength.
        distance = ndimage.distance_transform_edt(fraction[k] == 0, sampling=voxel)
        ring = (distance > 10.0) & (distance < 50.0)
        scale = strength / max(float(np.percentile(np.abs(streaks[ring]), 99.0)), 1e-9)
        # Capped near the metal: without it the dark band inside a stent would fall to air density.
        streaks = np.clip(streaks * scale, -2.5 * strength, 2.5 * strength)
        # Streaks inside the patient and around (not on) the metal, which stays at metal density.
        where = anatomy.body[k] & (fraction[k] == 0)
        new[k] += np.sign(streaks) * np.maximum(np.abs(streaks) - STREAK_THRESHOLD_HU, 0.0) * where
    parameters["streak_hu"] = float(strength)
    return new, parameters


def _push_inwards(
    hu: np.ndarray, movable: np.ndarray, from_wall: np.ndarray, grid: PhantomGrid, shift_mm: float
):
    """Move the contents of ``movable`` towards each slice's centre, by ``shift_mm`` at the wall, fading to 0
    at three times that depth: the fluid layer then borders organs and bowel pushed away from the wall, as
    ascites does, instead of simply overwriting them."""
    new = hu.copy()
    k, j, i = np.nonzero(movable)
    if k.size == 0:
        return new
    shift = shift_mm * np.clip(1.0 - from_wall[k, j, i] / (3.0 * shift_mm), 0.0, 1.0)
    counts = np.bincount(k, minlength=grid.shape_zyx[0]).clip(min=1)
    centre_j = (np.bincount(k, weights=j, minlength=grid.shape_zyx[0]) / counts)[k]
    centre_i = (np.bincount(k, weights=i, minlength=grid.shape_zyx[0]) / counts)[k]
    dy, dx = (j - centre_j) * grid.spacing_xyz[1], (i - centre_i) * grid.spacing_xyz[0]
    length = np.maximum(np.hypot(dx, dy), 1e-6)
    # Each voxel takes the value found further out: the contents move inwards.
    source = np.stack(
        [k, j + shift * dy / length / grid.spacing_xyz[1], i + shift * dx / length / grid.spacing_xyz[0]]
    )
    new[k, j, i] = ndimage.map_coordinates(hu, source, order=1, mode="nearest")
    return new


def _ascites(hu: np.ndarray, anatomy: Anatomy, rng: np.random.Generator, noise_hu: float):
    grid = anatomy.grid
    thickness = rng.uniform(6.0, 25.0)
    peritoneal = anatomy.cavity & np.isin(
        anatomy.tissue, (Tissue.FAT, Tissue.GI_WALL, Tissue.GI_FLUID, Tissue.GI_GAS, Tissue.STOOL)
    )
    x, y, z = _points_mm(grid)
    retroperitoneum = (y > anatomy.habitus["spine_front_y_mm"] - 10.0) & (np.abs(x) < 90.0)
    peritoneal &= ~retroperitoneum & (grid.p > 0.03)
    from_wall = ndimage.distance_transform_edt(anatomy.cavity, sampling=grid.spacing_zyx)
    organs = np.isin(anatomy.tissue, (Tissue.LIVER, Tissue.LIVER_VESSEL, Tissue.SPLEEN))
    from_organs = ndimage.distance_transform_edt(~organs, sampling=grid.spacing_zyx)
    pelvis_extra = np.where(grid.p < 0.3, 1.8, 1.0)
    fluid = peritoneal & ((from_wall < thickness * pelvis_extra) | (from_organs < 0.8 * thickness))
    movable = (
        anatomy.cavity
        & ~retroperitoneum
        & (grid.p > 0.03)
        & ~np.isin(
            anatomy.tissue,
            (Tissue.BONE_CORTICAL, Tissue.BONE_CANCELLOUS, Tissue.LUNG, Tissue.LUNG_VESSEL, Tissue.HEART),
        )
    )
    displaced = _push_inwards(hu, movable, from_wall, grid, 0.7 * thickness)
    weight = ndimage.gaussian_filter(fluid.astype(np.float32), (0.35, 0.6, 0.6))
    weight[weight < 0.05] = 0.0
    fluid_hu = rng.uniform(0.0, 20.0)
    noise = ct_noise(rng, grid.shape_zyx, grid.spacing_xyz[:2], noise_hu)
    new = displaced * (1.0 - weight) + weight * (fluid_hu + noise)
    voxel_ml = float(np.prod(grid.spacing_xyz)) / 1000.0
    return new, {"thickness_mm": thickness, "displacement_mm": 0.7 * thickness, "fluid_hu": fluid_hu,
                 "volume_ml": float(fluid.sum() * voxel_ml)}  # fmt: skip


def _blob(hu: np.ndarray, anatomy: Anatomy, rng: np.random.Generator, noise_hu: float):
    grid = anatomy.grid
    radius = max(rng.uniform(8.0, 30.0), _minimum_radius(grid))
    centre, _ = _pick_centre(rng, anatomy.body, grid, radius)
    delta = rng.choice([-1.0, 1.0]) * rng.uniform(50.0, 300.0)
    weight = _soft_blob(grid, rng, centre, radius, edge=0.2) * anatomy.body
    return hu + weight * delta, {"centre_xyz_mm": list(centre), "radius_mm": radius, "delta_hu": float(delta)}


def _deformation(hu: np.ndarray, anatomy: Anatomy, rng: np.random.Generator, noise_hu: float):
    grid = anatomy.grid
    radius = max(rng.uniform(15.0, 40.0), 2.5 * max(grid.spacing_xyz))
    centre, _ = _pick_centre(rng, anatomy.body, grid, radius)
    strength = rng.choice([-1.0, 1.0]) * rng.uniform(0.25, 0.5)
    # Work in the ball's bounding box only: the warp is the identity outside the ball.
    x, y, z = _points_mm(grid)
    box = tuple(
        slice(
            int(np.searchsorted(axis.ravel(), c - radius)), int(np.searchsorted(axis.ravel(), c + radius)) + 1
        )
        for axis, c in ((z, centre[2]), (y, centre[1]), (x, centre[0]))
    )
    offset = np.stack(np.broadcast_arrays(z[box[0]] - centre[2], y[:, box[1]] - centre[1],
                                          x[:, :, box[2]] - centre[0]))  # fmt: skip
    r = np.sqrt((offset**2).sum(axis=0)) / radius
    # Radial displacement u(r) = strength * r * (1 - r^2)^2: smooth, zero at the centre and at the edge.
    factor = strength * np.clip(1.0 - r**2, 0.0, None) ** 2
    start = np.array([b.start for b in box], dtype=np.float32)[:, None, None, None]
    spacing = np.array(grid.spacing_zyx, dtype=np.float32)[:, None, None, None]
    index = start + np.indices(r.shape, dtype=np.float32) - factor[None] * offset / spacing
    new = hu.copy()
    new[box] = np.where(r < 1.0, ndimage.map_coordinates(hu, index, order=1, mode="nearest"), hu[box])
    return new, {"centre_xyz_mm": list(centre), "radius_mm": radius, "strength": float(strength)}


_INSERTERS: dict[str, Inserter] = {
    "tumour": _tumour,
    "metal": _metal,
    "ascites": _ascites,
    "blob": _blob,
    "deformation": _deformation,
}


def insert_anomaly(
    kind: str, hu: np.ndarray, anatomy: Anatomy, rng: np.random.Generator, noise_hu: float
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Insert one anomaly of ``kind`` into ``hu`` (not modified).

    Returns:
        The new volume (whole HU, clipped to [-1024, 3071]), the boolean mask of the voxels that changed, and
        the parameters drawn for the anomaly (for the manifest).

    Raises:
        ConfigError: unknown kind, or no room for the anomaly in this anatomy.
    """
    if kind not in _INSERTERS:
        raise ConfigError(f"unknown anomaly kind {kind!r}; choose from {sorted(_INSERTERS)}")
    new, parameters = _INSERTERS[kind](hu, anatomy, rng, noise_hu)
    new = np.clip(np.rint(new), -1024.0, 3071.0).astype(np.float32)
    changed = new != hu
    if not changed.any():
        raise ConfigError(f"the {kind} anomaly changed no voxel on this grid: use a finer or larger volume")
    return new, changed, parameters
