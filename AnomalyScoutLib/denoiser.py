"""The denoiser: a U-Net trained to remove coarse noise from normal slices (Kascenas et al., 2023).

The GAN's reconstruction must draw the whole slice from a code, and on these cores it misses normal tissue by
about 55 HU (``docs/benchmarks.md``, section 11). A denoising U-Net copies what it can see through its skip
connections, and so draws normal tissue within about 15 HU; trained to undo noise drawn on a coarse grid
(16 x 16, upsampled; sigma 0.4 of the window's half-width, their 0.2 of a [0, 1] range), it learns to pull
blob-sized departures from normal anatomy back towards it. Its residual ``|x - D(x)|`` is a second,
independent opinion on a slice, with its own per-position calibration (``docs/benchmarks.md``, section 13).
Its slice score is the mean of the residual's top ``top_fraction`` of body pixels, as for the pixel residual.

Example:
    >>> denoiser = Denoiser(DenoiserConfig(channels=(8, 16)))
    >>> denoiser.slice_scores(x, body).shape   # (N,)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.nets.unet import UNet2d
from AnomalyScoutLib.part_config import part_from_metadata, settings_from_dict
from AnomalyScoutLib.scoring import top_fraction_mean

__all__ = ["DENOISER_KEY", "Denoiser", "DenoiserConfig", "coarse_noise", "denoiser_from_metadata"]

#: Prefix of the denoiser's tensors, and key of its ``{"config": {...}, "training": {...}}`` in a model file.
DENOISER_KEY = "denoiser"


@dataclass(frozen=True)
class DenoiserConfig:
    """The denoiser's size, its training noise and its slice score (stored in the model file).

    Attributes:
        channels: U-Net feature channels per level, finest first.
        stride: the U-Net runs at 1/stride of the slice's resolution behind a stride x stride stem (2: about
            a quarter of full resolution's cost, with the same detection in a probe; 1, 2 or 4).
        coarse: side of the grid the training noise is drawn on before it is upsampled to the slice.
        sigma: standard deviation of the training noise, in the window's units ([-1, 1]).
        top_fraction: share of body pixels whose mean residual is the slice score.
    """

    channels: tuple[int, ...] = (24, 48, 96, 192)
    stride: int = 2
    coarse: int = 16
    sigma: float = 0.4
    top_fraction: float = 0.01

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if len(self.channels) < 2 or min(self.channels) < 1:
            raise ConfigError(f"denoiser channels need at least two positive levels, got {self.channels}")
        if self.stride not in (1, 2, 4):
            raise ConfigError(f"denoiser stride must be 1, 2 or 4, got {self.stride}")
        if self.coarse < 1 or not self.sigma > 0:
            raise ConfigError(f"denoiser noise needs coarse >= 1 and sigma > 0: {self.coarse}, {self.sigma}")
        if not 0.0 < self.top_fraction <= 1.0:
            raise ConfigError(f"denoiser top_fraction must be in (0, 1], got {self.top_fraction}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "channels": list(self.channels)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DenoiserConfig:
        """The inverse of :meth:`to_dict`; unknown keys are refused (a newer file, or a typo)."""
        return settings_from_dict(cls, data, "denoiser")


def coarse_noise(
    shape: tuple[int, ...], generator: torch.Generator, coarse: int = 16, sigma: float = 0.4
) -> torch.Tensor:
    """Gaussian noise drawn on a ``coarse x coarse`` grid, upsampled bilinearly to ``shape`` (N, C, H, W)."""
    n, c, h, w = shape
    low = torch.randn((n, c, coarse, coarse), generator=generator) * sigma
    return F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)


class Denoiser(UNet2d):
    """``(N, H, W)`` slices in [-1, 1] -> their denoised versions, at the slices' resolution."""

    def __init__(self, config: DenoiserConfig | None = None) -> None:
        config = config or DenoiserConfig()
        super().__init__(1, config.channels, config.stride)
        self.config = config

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 3:
            raise ValueError(f"need images (N, H, W), got {tuple(image.shape)}")
        if image.shape[-1] % self.size_multiple or image.shape[-2] % self.size_multiple:
            raise ValueError(f"image height and width must be multiples of {self.size_multiple}")
        return self.unet(image[:, None])[:, 0]

    def residual_maps(self, image: torch.Tensor, body: torch.Tensor) -> torch.Tensor:
        """``|x - D(x)|`` ``(N, H, W)`` in window units, 0 outside the boolean ``body``."""
        return (image - self(image)).abs().float() * body

    def slice_scores(self, image: torch.Tensor, body: torch.Tensor) -> torch.Tensor:
        """Slice scores ``(N,)``: the mean of the top ``top_fraction`` of each residual's body pixels."""
        return top_fraction_mean(self.residual_maps(image, body), body, self.config.top_fraction)


def denoiser_from_metadata(info: Any) -> Denoiser:
    """A fresh denoiser from a model file's ``metadata["denoiser"]`` entry (weights loaded by the caller).

    Raises:
        ConfigError: the entry is not ``{"config": {...}, ...}`` with valid settings.
    """
    return part_from_metadata(info, "denoiser", lambda config: Denoiser(DenoiserConfig.from_dict(config)))
