"""Random fields for the phantom: smooth organ texture and shape wobble, and CT-like correlated noise.

Real CT noise is not white: filtered back-projection shapes it with a ramp filter times a smoothing window, so
its noise power spectrum (NPS) is zero at zero frequency, peaks around 0.2-0.3 cycles/mm and falls off towards
Nyquist. A model trained on white noise would learn a texture no scanner produces, hence :func:`ct_noise`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["ct_noise", "smooth_field"]


def smooth_field(
    rng: np.random.Generator,
    shape_zyx: tuple[int, int, int],
    spacing_zyx: tuple[float, float, float],
    scale_mm: float,
) -> np.ndarray:
    """Gaussian random field with unit standard deviation and a correlation length of about ``scale_mm``.

    The field is made on a coarse grid (cells of about half the correlation length) and interpolated up, so a
    smooth field for a 256x256x100 volume costs a fraction of a second instead of a full-size 3-D filter.

    Args:
        rng: the only source of randomness (determinism by seed).
        shape_zyx: output shape.
        spacing_zyx: voxel size in mm along each array axis.
        scale_mm: Gaussian smoothing sigma in mm; must be positive.
    """
    if scale_mm <= 0:
        raise ValueError(f"scale_mm must be positive, got {scale_mm}")
    factors = [max(1, int(scale_mm / (2.0 * s))) for s in spacing_zyx]
    coarse_shape = [n // f + 2 for n, f in zip(shape_zyx, factors)]
    coarse = rng.standard_normal(coarse_shape).astype(np.float32)
    sigma = [scale_mm / (s * f) for s, f in zip(spacing_zyx, factors)]
    coarse = ndimage.gaussian_filter(coarse, sigma, mode="wrap")
    field = ndimage.zoom(coarse, factors, order=1) if max(factors) > 1 else coarse
    field = field[: shape_zyx[0], : shape_zyx[1], : shape_zyx[2]]
    field = field - field.mean()
    return (field / max(float(field.std()), 1e-6)).astype(np.float32)


def ct_noise(
    rng: np.random.Generator,
    shape_zyx: tuple[int, int, int],
    spacing_xy_mm: tuple[float, float],
    sigma_hu: float,
    peak_cycles_per_mm: float = 0.25,
) -> np.ndarray:
    """Per-slice noise whose in-plane NPS is ramp x Gaussian window, like filtered back-projection.

    NPS(f) = f * exp(-(f / fc)^2) with fc = sqrt(2) * peak, so the spectrum peaks at ``peak_cycles_per_mm``.
    Slices are independent (axial reconstruction); the result is scaled to standard deviation ``sigma_hu``.
    """
    nz, ny, nx = shape_zyx
    white = rng.standard_normal((nz, ny, nx)).astype(np.float32)
    fy = np.fft.fftfreq(ny, d=spacing_xy_mm[1])[:, None]
    fx = np.fft.rfftfreq(nx, d=spacing_xy_mm[0])[None, :]
    radius = np.hypot(fx, fy)
    cutoff = np.sqrt(2.0) * peak_cycles_per_mm
    amplitude = np.sqrt(radius * np.exp(-((radius / cutoff) ** 2))).astype(np.float32)
    noise = np.fft.irfft2(np.fft.rfft2(white, axes=(1, 2)) * amplitude, s=(ny, nx), axes=(1, 2))
    std = float(noise.std())
    return (noise * (sigma_hu / max(std, 1e-12))).astype(np.float32)
