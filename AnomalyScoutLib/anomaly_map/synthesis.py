"""Generic synthetic anomalies made only from normal slices, to teach the anomaly-map head.

The head must learn "this differs from normal anatomy" without ever seeing a real lesion, and without being
taught the test's own anomalies: the phantom's inserters (tumour, metal, ascites, blob, deformation) and any
sphere or ellipsoid are deliberately absent. Five families, each a different way normal tissue can be
disturbed (MOOD's strongest entries and DRAEM train on the first three kinds):

- ``foreign_patch``: Foreign Patch Interpolation (Tan et al.): the content of another patient's slice at
  another position, shifted, blended in with a random opacity over an irregular Perlin region.
- ``poisson_patch``: Natural Synthetic Anomalies (Schlüter et al.): a rescaled foreign patch blended in the
  gradient domain (Poisson blending, Jacobi iterations), so that its border is seamless.
- ``texture``: a Perlin region whose intensity, contrast, noise texture or smoothness is changed.
- ``diffuse_density``: a large, soft-edged region (about a quarter to half of the body) with a diffuse
  density change, additive or towards a fluid-like value with fresh noise: what small patches never teach.
- ``warp``: a smooth geometric warp: tissue pushed away from or pulled towards an irregular centre (mass
  effect or shrinkage), or a local swirl of Perlin displacement.

The truth of a synthetic anomaly is where it changed the slice visibly: inside the region and at least
:data:`CHANGE_THRESHOLD_HU` away from the normal value (the phantom's truth is "the voxels that changed" too).
Images are model-grid slices in the HU window's [-1, 1] units (the model's window converts to HU).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from AnomalyScoutLib.anomaly_map.perlin import perlin_noise, perlin_region
from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.preprocessing import HUWindow
from AnomalyScoutLib.scoring import gaussian_smooth

__all__ = ["CHANGE_THRESHOLD_HU", "FAMILIES", "Synthesized", "synthesize", "synthesize_batch"]

#: A pixel counts as anomalous when the synthesis changed it by at least this much (CT noise is ~10-20 HU).
CHANGE_THRESHOLD_HU = 10.0
_REGION_TRIES = 8
#: A family's output: the changed slice and the region it worked on (before the visibility rule).
_Result = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Synthesized:
    """Slices with synthetic anomalies ``(N, H, W)`` and their boolean truth masks (empty for normal ones)."""

    images: torch.Tensor
    masks: torch.Tensor


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _sign(generator: torch.Generator) -> float:
    return 1.0 if float(torch.rand((), generator=generator)) < 0.5 else -1.0


def _smooth(image: torch.Tensor, sigma_px: float) -> torch.Tensor:
    return gaussian_smooth(image[None].float(), sigma_px)[0]


def _region_in_body(
    body: torch.Tensor, generator: torch.Generator, **kwargs: float | int | tuple[float, float]
) -> torch.Tensor:
    """A Perlin region cut to the body, redrawn a few times if it misses the body altogether."""
    region = torch.zeros_like(body)
    for _ in range(_REGION_TRIES):
        region = perlin_region(tuple(body.shape), generator, within=body, device=body.device, **kwargs)
        if region.sum() >= 16:
            break
    return region


def _roll_flip(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The image shifted by up to a quarter of its size and flipped at random: content out of place."""
    h, w = image.shape
    dy, dx = (int(torch.randint(-s // 4, s // 4 + 1, (), generator=generator)) for s in (h, w))
    image = torch.roll(image, (dy, dx), dims=(0, 1))
    return image.flip(1) if float(torch.rand((), generator=generator)) < 0.5 else image


def _foreign_patch(
    x: torch.Tensor, body: torch.Tensor, donor: torch.Tensor, g: torch.Generator, window: HUWindow
) -> _Result:
    region = _region_in_body(body, g)
    opacity = _uniform(g, 0.3, 1.0)
    weight = _smooth(region.float(), _uniform(g, 0.5, 2.0)) * opacity
    return x + weight * (_roll_flip(donor, g) - x), region


def _laplacian(image: torch.Tensor) -> torch.Tensor:
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=image.device)
    return F.conv2d(F.pad(image[None, None], (1, 1, 1, 1), mode="replicate"), kernel[None, None])[0, 0]


def _neighbour_sum(image: torch.Tensor) -> torch.Tensor:
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], device=image.device)
    return F.conv2d(F.pad(image[None, None], (1, 1, 1, 1)), kernel[None, None])[0, 0]


def _rescaled(image: torch.Tensor, scale: float) -> torch.Tensor:
    """The image zoomed by ``scale`` about its centre, same size (edge values beyond the border)."""
    h, w = image.shape
    theta = torch.tensor([[1.0 / scale, 0.0, 0.0], [0.0, 1.0 / scale, 0.0]], device=image.device)
    grid = F.affine_grid(theta[None], [1, 1, h, w], align_corners=False)
    return F.grid_sample(image[None, None], grid, padding_mode="border", align_corners=False)[0, 0]


def _poisson_patch(
    x: torch.Tensor, body: torch.Tensor, donor: torch.Tensor, g: torch.Generator, window: HUWindow
) -> _Result:
    """Solve Δf = Δdonor inside the region with f = x outside, for the offset h = f - x (Jacobi,
    started from the plain paste, so that a short solve still gives a seamless border)."""
    region = _region_in_body(body, g)
    source = _roll_flip(_rescaled(donor, _uniform(g, 0.7, 1.4)), g)
    inside = region.float()
    target_laplacian = _laplacian(source) - _laplacian(x)
    offset = (source - x) * inside
    for _ in range(80):
        offset = (_neighbour_sum(offset) - target_laplacian) * 0.25 * inside
    return x + offset, region


def _texture(
    x: torch.Tensor, body: torch.Tensor, donor: torch.Tensor, g: torch.Generator, window: HUWindow
) -> _Result:
    hu = window.width / 2.0
    region = _region_in_body(body, g)
    weight = _smooth(region.float(), _uniform(g, 0.5, 2.0))
    kind = int(torch.randint(4, (), generator=g))
    if kind == 0:  # intensity shift
        changed = x + _sign(g) * _uniform(g, 30.0, 200.0) / hu
    elif kind == 1:  # new noise texture
        noise = _smooth(torch.randn(x.shape, generator=g).to(x.device), _uniform(g, 0.5, 2.0))
        changed = x + noise / noise.std().clamp_min(1e-6) * _uniform(g, 20.0, 80.0) / hu
    elif kind == 2:  # smoother than tissue: texture and small edges gone
        changed = _smooth(x, _uniform(g, 1.0, 3.0))
    else:  # contrast about the local mean
        local = _smooth(x, 4.0)
        changed = local + _uniform(g, 0.2, 2.5) * (x - local)
    return x + weight * (changed - x), region


def _diffuse_density(
    x: torch.Tensor, body: torch.Tensor, donor: torch.Tensor, g: torch.Generator, window: HUWindow
) -> _Result:
    hu = window.width / 2.0
    region = _region_in_body(body, g, max_log2_cells=1, coverage=(0.5, 0.9))
    weight = _smooth(region.float(), _uniform(g, 2.0, 6.0))
    if float(torch.rand((), generator=g)) < 0.5:
        changed = x + _sign(g) * _uniform(g, 20.0, 120.0) / hu
    else:
        value = float(window.normalize(torch.tensor(_uniform(g, -30.0, 80.0))))  # fluid to soft tissue
        noise = torch.randn(x.shape, generator=g).to(x.device) * _uniform(g, 8.0, 25.0) / hu
        mix = _uniform(g, 0.5, 0.95)
        changed = x + mix * (value + noise - x)
    return x + weight * (changed - x), region


def _warp(
    x: torch.Tensor, body: torch.Tensor, donor: torch.Tensor, g: torch.Generator, window: HUWindow
) -> _Result:
    """Displace the slice by a smooth field: the gradient of a blurred irregular bump (mass effect, either
    sign) or a Perlin swirl under a blurred irregular window."""
    h, w = x.shape
    region = _region_in_body(body, g, max_log2_cells=2, coverage=(0.1, 0.4))
    bump = _smooth(region.float(), _uniform(g, 4.0, 10.0))
    amplitude = _uniform(g, 3.0, 10.0)
    if float(torch.rand((), generator=g)) < 0.5:
        dy, dx = torch.gradient(bump)
        field = torch.stack([dx, dy]) * _sign(g)
    else:
        cells = (int(torch.randint(1, 4, (), generator=g)), int(torch.randint(1, 4, (), generator=g)))
        field = torch.stack([perlin_noise((h, w), cells, g, x.device) for _ in range(2)]) * bump
    field = field / field.abs().amax().clamp_min(1e-6) * amplitude  # pixels, (dx, dy)
    ys, xs = torch.meshgrid(
        torch.arange(h, device=x.device, dtype=x.dtype),
        torch.arange(w, device=x.device, dtype=x.dtype),
        indexing="ij",
    )
    # Pull-back: the output at p takes the input at p - d(p) (the tissue moved by +d).
    sample_x = (xs - field[0]) / (w - 1) * 2.0 - 1.0
    sample_y = (ys - field[1]) / (h - 1) * 2.0 - 1.0
    grid = torch.stack([sample_x, sample_y], dim=-1)[None]
    warped = F.grid_sample(x[None, None], grid, padding_mode="border", align_corners=True)[0, 0]
    moved = field.pow(2).sum(0).sqrt() >= 1.0
    return warped, moved & body


_Family = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator, HUWindow], _Result]
_FAMILIES: dict[str, _Family] = {
    "foreign_patch": _foreign_patch,
    "poisson_patch": _poisson_patch,
    "texture": _texture,
    "diffuse_density": _diffuse_density,
    "warp": _warp,
}
#: The synthesis families, in a fixed order.
FAMILIES: tuple[str, ...] = tuple(_FAMILIES)


def synthesize(
    image: torch.Tensor,
    body: torch.Tensor,
    donor: torch.Tensor,
    family: str,
    generator: torch.Generator,
    window: HUWindow | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``(H, W)`` slice with a ``family`` anomaly -> (new slice, boolean truth).

    Args:
        image: a normal slice in [-1, 1]; not modified.
        body: its boolean body mask; anomalies stay inside it.
        donor: a normal slice of another case (or position) for the patch families.
        generator: CPU generator for every random choice (a seed repeats the anomaly exactly).
        window: the HU window the images were normalised with (default: the default window).
    """
    if family not in _FAMILIES:
        raise ConfigError(f"unknown synthesis family {family!r}; known: {', '.join(FAMILIES)}")
    if image.ndim != 2 or body.shape != image.shape or donor.shape != image.shape:
        raise ValueError(
            f"need image, body and donor of one (H, W) shape, got {tuple(image.shape)}, "
            f"{tuple(body.shape)}, {tuple(donor.shape)}"
        )
    window = window or HUWindow()
    hu_per_unit = window.width / 2.0
    image = image.float()
    changed, region = _FAMILIES[family](image, body.bool(), donor.float(), generator, window)
    changed = torch.where(body.bool(), changed, image).clamp(-1.0, 1.0)
    visible = (changed - image).abs() * hu_per_unit >= CHANGE_THRESHOLD_HU
    return changed, region & visible


def synthesize_batch(
    images: torch.Tensor,
    body: torch.Tensor,
    donors: torch.Tensor,
    families: Sequence[str | None],
    generator: torch.Generator,
    window: HUWindow | None = None,
) -> Synthesized:
    """:func:`synthesize` for each slice of ``(N, H, W)`` images; a ``None`` family leaves a slice normal."""
    if len(families) != len(images):
        raise ValueError(f"{len(families)} families for {len(images)} slices")
    out, masks = images.float().clone(), torch.zeros(images.shape, dtype=torch.bool, device=images.device)
    for i, family in enumerate(families):
        if family is not None:
            out[i], masks[i] = synthesize(images[i], body[i], donors[i], family, generator, window)
    return Synthesized(out, masks)
