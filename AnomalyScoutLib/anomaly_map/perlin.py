"""Perlin noise and the irregular region masks cut from it, for synthetic anomalies.

DRAEM (Zavrtanik et al. 2021) draws its anomaly regions by thresholding Perlin noise: the shapes are
irregular, of every size and at every place, unlike the spheres and ellipsoids of the phantom's own
inserters (which are the test and must not be taught). Everything here is torch on the caller's device with
an explicit ``torch.Generator``, so a seed gives the same regions on every run.
"""

from __future__ import annotations

import math

import torch

__all__ = ["perlin_noise", "perlin_region"]


def _fade(t: torch.Tensor) -> torch.Tensor:
    """Perlin's quintic fade 6t⁵ - 15t⁴ + 10t³: smooth (C²) across cell borders."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(
    shape: tuple[int, int],
    cells: tuple[int, int],
    generator: torch.Generator,
    device: torch.device | None = None,
) -> torch.Tensor:
    """One 2-D gradient-noise image ``(H, W)`` with ``cells`` lattice cells along (rows, cols), values in
    about [-0.7, 0.7]; more cells = smaller features.

    Args:
        shape: ``(H, W)`` of the image.
        cells: lattice cells along rows and columns (at least 1 each).
        generator: CPU generator that draws the random gradient directions.
        device: where the image is made (default CPU).
    """
    if min(cells) < 1 or min(shape) < 1:
        raise ValueError(f"shape and cells must be positive, got {shape} and {cells}")
    angles = 2.0 * math.pi * torch.rand(cells[0] + 1, cells[1] + 1, generator=generator)
    gradients = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1).to(device)
    ys = torch.linspace(0.0, cells[0], shape[0] + 1, device=device)[:-1]
    xs = torch.linspace(0.0, cells[1], shape[1] + 1, device=device)[:-1]
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    y0, x0 = y.floor().long(), x.floor().long()
    ty, tx = y - y0, x - x0

    def corner(dy: int, dx: int) -> torch.Tensor:
        g = gradients[y0 + dy, x0 + dx]
        return g[..., 0] * (ty - dy) + g[..., 1] * (tx - dx)

    fy, fx = _fade(ty), _fade(tx)
    top = corner(0, 0) + fx * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + fx * (corner(1, 1) - corner(1, 0))
    return top + fy * (bottom - top)


def perlin_region(
    shape: tuple[int, int],
    generator: torch.Generator,
    *,
    max_log2_cells: int = 4,
    coverage: tuple[float, float] = (0.05, 0.3),
    within: torch.Tensor | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """A boolean ``(H, W)`` region: Perlin noise of a random scale thresholded to cover a random share of
    the image, intersected with a second, coarser noise so that it is localised rather than spread over the
    whole image (one or a few irregular lumps at random places).

    Args:
        max_log2_cells: the finest scale (2**max cells along a side); scales are drawn per axis from 2**0.
        coverage: range of the share of the image (or of ``within``) the fine noise keeps before
            localisation; the coarse noise then keeps about half of that.
        within: optional boolean ``(H, W)`` area (the body): shares are of it, and the region lies in it.
    """
    log2 = torch.randint(0, max_log2_cells + 1, (2,), generator=generator)
    fine = perlin_noise(shape, (int(2 ** log2[0]), int(2 ** log2[1])), generator, device)
    share = coverage[0] + (coverage[1] - coverage[0]) * float(torch.rand((), generator=generator))
    area = torch.ones(shape, dtype=torch.bool, device=device) if within is None else within.bool()
    if not area.any():
        return torch.zeros(shape, dtype=torch.bool, device=device)
    region = fine > torch.quantile(fine[area].float(), 1.0 - share)
    coarse = perlin_noise(shape, (2, 2), generator, device)
    return region & (coarse > torch.quantile(coarse[area].float(), 0.5)) & area
