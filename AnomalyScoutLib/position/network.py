"""The body-part regressor: one small CNN that places an axial CT slice on the model's anatomical scale.

The scale is the phantom's: 0 at the pelvis floor, 1 at the lung bases (``phantom.anatomy.LEVELS``), about
330 mm of an adult body. The network sees each slice at a *fixed physical* field of view (``field_mm``)
centred on the body, so that a 512² DICOM at 0.7 mm and a 96² phantom at 4 mm look alike: the size of the
body and of its organs is part of what tells the level. Two input channels (a wide window that keeps lung
and bone apart, a soft-tissue window) carry what a radiologist would look at. It is cheap on purpose
(≈ 7 MFLOP a slice at 64²): a 300-slice CT takes well under a second on two CPU cores.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from AnomalyScoutLib.errors import ConfigError, VolumeError

__all__ = ["PositionRegressor", "RegressorConfig", "body_centres_mm", "regressor_input"]

#: HU below this is air (outside the body, lung, bowel gas) for centring the field of view.
_BODY_HU = -400.0


@dataclass(frozen=True)
class RegressorConfig:
    """Shape of the regressor and how slices are prepared for it (stored in the model file's JSON).

    Attributes:
        resolution: side of the network's input in pixels.
        field_mm: physical side of the input's field of view, centred on the body.
        channels: widths of the stride-2 convolution stages (each halves the side).
        windows: HU windows ``(low, high)``, one input channel each, mapped to [-1, 1].
        slice_error: typical error of one slice placed alone (median on validation phantoms), the
            uncertainty reported when a scan has too few slices for a fit.
    """

    resolution: int = 64
    field_mm: float = 440.0
    channels: tuple[int, ...] = (16, 32, 64, 64)
    windows: tuple[tuple[float, float], ...] = ((-1000.0, 1000.0), (-160.0, 240.0))
    slice_error: float = 0.05

    def __post_init__(self) -> None:
        if self.resolution < 16 or self.resolution % (2 ** len(self.channels)) != 0:
            raise ConfigError(
                f"regressor resolution {self.resolution} must be >= 16 and divisible by "
                f"2**{len(self.channels)} (one halving per stage)"
            )
        if not self.channels or min(self.channels) < 1:
            raise ConfigError(f"regressor channels must be positive widths, got {self.channels}")
        if self.field_mm <= 0:
            raise ConfigError(f"regressor field_mm must be positive, got {self.field_mm}")
        if not self.windows or any(len(w) != 2 or w[1] <= w[0] for w in self.windows):
            raise ConfigError(
                f"regressor windows must be (low, high) pairs with low < high, got {self.windows}"
            )

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["channels"] = list(self.channels)
        values["windows"] = [list(w) for w in self.windows]
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RegressorConfig:
        known = {"resolution", "field_mm", "channels", "windows", "slice_error"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown regressor configuration keys: {', '.join(unknown)}")
        try:
            return cls(
                resolution=int(values.get("resolution", 64)),
                field_mm=float(values.get("field_mm", 440.0)),
                channels=tuple(int(c) for c in values.get("channels", (16, 32, 64, 64))),
                windows=tuple((float(lo), float(hi)) for lo, hi in values.get("windows", ())),
                slice_error=float(values.get("slice_error", 0.05)),
            )
        except (TypeError, ValueError) as error:
            raise ConfigError(f"invalid regressor configuration: {error}") from None


class PositionRegressor(nn.Module):
    """Slice image(s) ``(N, C, R, R)`` -> position on the anatomical scale ``(N,)`` (unbounded)."""

    def __init__(self, config: RegressorConfig) -> None:
        super().__init__()
        self.config = config
        width = len(config.windows)
        layers: list[nn.Module] = []
        for out in config.channels:
            layers += [nn.Conv2d(width, out, 3, stride=2, padding=1), nn.GroupNorm(4, out), nn.SiLU()]
            width = out
        self.trunk = nn.Sequential(*layers)
        side = config.resolution // 2 ** len(config.channels)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(width * side * side, 64), nn.SiLU(), nn.Linear(64, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (len(self.config.windows), self.config.resolution, self.config.resolution)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise VolumeError(
                f"regressor input has shape {tuple(x.shape)}, expected (N, {', '.join(map(str, expected))})"
            )
        return self.head(self.trunk(x))[:, 0]


def body_centres_mm(
    canonical_hu: np.ndarray | torch.Tensor, spacing_rc_mm: tuple[float, float]
) -> torch.Tensor:
    """Centre ``(row_mm, col_mm)`` of the body in every slice, ``(n, 2)``, from the slice's top-left edge.

    The centroid of the voxels denser than air; a slice with none gets the centre of its field of view.
    """
    hu = torch.as_tensor(canonical_hu, dtype=torch.float32)
    n, rows, cols = hu.shape
    dense = (hu > _BODY_HU).to(torch.float32)
    weight = dense.sum(dim=(1, 2))
    row_mm = (torch.arange(rows, dtype=torch.float32) + 0.5) * spacing_rc_mm[0]
    col_mm = (torch.arange(cols, dtype=torch.float32) + 0.5) * spacing_rc_mm[1]
    centre_r = (dense.sum(dim=2) * row_mm).sum(dim=1) / weight.clamp(min=1.0)
    centre_c = (dense.sum(dim=1) * col_mm).sum(dim=1) / weight.clamp(min=1.0)
    empty = weight == 0
    centre_r[empty] = rows * spacing_rc_mm[0] / 2
    centre_c[empty] = cols * spacing_rc_mm[1] / 2
    return torch.stack([centre_r, centre_c], dim=1)


def regressor_input(
    canonical_hu: np.ndarray | torch.Tensor,
    spacing_rc_mm: tuple[float, float],
    config: RegressorConfig,
    transform: torch.Tensor | None = None,
    shift_mm: torch.Tensor | None = None,
) -> torch.Tensor:
    """Canonical HU slices ``(n, rows, cols)`` -> network input ``(n, C, R, R)``.

    Each slice is resampled to ``config.field_mm`` around its body centre (after a box pre-filter so that a
    fine 512² slice does not alias), outside the image is air, and every HU window becomes a channel.

    Args:
        transform: optional ``(n, 2, 2)`` matrices applied to the output grid (rotation, scale, flips) — the
            training's geometric augmentation; identity when ``None``.
        shift_mm: optional ``(n, 2)`` offsets of the field of view's centre (row, col) in mm.
    """
    hu = torch.as_tensor(canonical_hu, dtype=torch.float32)
    if hu.ndim != 3 or hu.shape[0] == 0:
        raise VolumeError(f"regressor input needs (slices, rows, cols) HU, got shape {tuple(hu.shape)}")
    n, rows, cols = hu.shape
    pixel_mm = config.field_mm / config.resolution
    factor = max(1, int(math.floor(pixel_mm / max(spacing_rc_mm) / 1.5)))
    if factor > 1:
        # Pool first: the box pre-filter, and every later pass (centres, clamping) on 1/factor² of the
        # voxels: most of the time of placing a 512² CT went into full-resolution passes. Training pools
        # its volumes to 2.5 mm before this function, so the centres are found on pooled slices there too.
        hu = F.avg_pool2d(hu[:, None], factor, stride=factor, ceil_mode=True)[:, 0]
        spacing_rc_mm = (spacing_rc_mm[0] * factor, spacing_rc_mm[1] * factor)
        rows, cols = hu.shape[1:]
    centres = body_centres_mm(hu, spacing_rc_mm)
    if shift_mm is not None:
        centres = centres + shift_mm
    image = ((hu.clamp(-1024.0, 3000.0) + 1024.0) / 1024.0)[:, None]  # air -> 0: zero padding is air
    height_mm, width_mm = rows * spacing_rc_mm[0], cols * spacing_rc_mm[1]
    # Output (u, v) in [-1, 1] covers field_mm around the centre; input coordinates are normalised to the
    # image's own extent (align_corners=False: -1 and 1 are the outer edges of the edge pixels).
    matrix = torch.eye(2).expand(n, 2, 2) if transform is None else transform.to(torch.float32)
    half = config.field_mm / 2.0
    scale = torch.tensor([2.0 * half / width_mm, 2.0 * half / height_mm])  # (x, y) in grid_sample's order
    theta = torch.zeros(n, 2, 3)
    theta[:, :, :2] = scale[None, :, None] * matrix
    theta[:, 0, 2] = 2.0 * centres[:, 1] / width_mm - 1.0
    theta[:, 1, 2] = 2.0 * centres[:, 0] / height_mm - 1.0
    grid = F.affine_grid(theta, [n, 1, config.resolution, config.resolution], align_corners=False)
    sampled = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    sampled_hu = sampled * 1024.0 - 1024.0
    channels = [((sampled_hu.clamp(lo, hi) - lo) / (hi - lo) * 2.0 - 1.0) for lo, hi in config.windows]
    return torch.cat(channels, dim=1)
