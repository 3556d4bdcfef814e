"""A per-position intensity atlas: how unusual is each pixel for a slice at this place in the body?

The second opinion beside the reconstruction. The residual and the learned head judge a slice against its
pseudo-normal reconstruction, which redraws whatever anatomy the encoder reads into it: a fluid layer along
the abdominal wall is drawn back as a thicker muscle, and nothing is left to see. The atlas knows what tissue
belongs *where* at a position (fat, not fluid, under the wall) from the mean and spread of every pixel over
normal training slices near that position, and fails differently: blurred where patients differ, blind to
small lesions. Calibrated per position like the main score and combined with it by the larger percentile
(``engine``), the two found more than either on held-out phantoms (``docs/benchmarks.md``, section 9:
0.727 mean slice AUROC over anomaly types, against 0.685 for the head and 0.655 for the atlas).

Fitted on the model's *training* volumes (``anomalyscout fit-atlas``), never on the normals that calibrate
it: an atlas scored on its own slices looks more normal than it is. Stored in the model file as two tensors
(``atlas.mean``, ``atlas.std``: bins x res x res, the model grid) and ``metadata["position_atlas"]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.scoring import top_fraction_mean

__all__ = ["METADATA_KEY", "PREFIX", "AtlasAccumulator", "AtlasConfig", "PositionAtlas"]

METADATA_KEY = "position_atlas"
PREFIX = "atlas"


@dataclass(frozen=True)
class AtlasConfig:
    """What defines an atlas and its slice score.

    Attributes:
        bins: position bins over [0, 1].
        bandwidth: Gaussian kernel width (relative position) that spreads each training slice over the bins,
            so that a sparse bin borrows from its neighbours.
        std_floor: smallest spread (window units; 0.05 is 15 HU with the default window), so that pixels that
            never vary in training (air) give finite z-scores.
        top_fraction: share of the body's pixels whose z-scores are averaged into the slice score.
    """

    bins: int = 20
    bandwidth: float = 0.04
    std_floor: float = 0.05
    top_fraction: float = 0.01

    def __post_init__(self) -> None:
        if self.bins < 1 or self.bandwidth <= 0 or self.std_floor <= 0 or not 0 < self.top_fraction <= 1:
            raise ConfigError(
                "atlas needs bins >= 1, bandwidth > 0, std_floor > 0 and top_fraction in (0, 1], got "
                f"{asdict(self)}"
            )

    @property
    def centres(self) -> torch.Tensor:
        return (torch.arange(self.bins, dtype=torch.float64) + 0.5) / self.bins


class PositionAtlas(nn.Module):
    """Mean and spread of every model-grid pixel per position bin; maps are |z| scores.

    Buffers ``mean`` and ``std`` (bins, res, res) in the networks' [-1, 1] units.
    """

    def __init__(self, config: AtlasConfig, resolution: int) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.zeros(config.bins, resolution, resolution))
        self.register_buffer("std", torch.ones(config.bins, resolution, resolution))

    def bin_of(self, positions: torch.Tensor) -> torch.Tensor:
        """Nearest bin of positions on the model's scale (outside [0, 1]: the end bins)."""
        return (positions.float() * self.config.bins).long().clamp(0, self.config.bins - 1)

    def z_maps(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``|x - mean| / std`` of ``(N, H, W)`` slices against their positions' bins."""
        b = self.bin_of(positions)
        return (x - self.mean[b]).abs() / self.std[b]

    def slice_scores(self, x: torch.Tensor, positions: torch.Tensor, area: torch.Tensor) -> torch.Tensor:
        """Mean of the highest ``top_fraction`` of z-scores inside ``area`` (bool, like ``x``), per slice."""
        return top_fraction_mean(self.z_maps(x, positions), area, self.config.top_fraction)

    def metadata(self, volumes: int) -> dict[str, Any]:
        return {"config": asdict(self.config), "volumes": volumes}

    @classmethod
    def from_metadata(cls, info: Any, resolution: int) -> PositionAtlas:
        """An empty atlas shaped as ``metadata["position_atlas"]`` says (its tensors are loaded after)."""
        if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
            raise ConfigError(f"{METADATA_KEY} must hold a config object, got {info!r}")
        try:
            return cls(AtlasConfig(**info["config"]), resolution)
        except TypeError as error:
            raise ConfigError(f"{METADATA_KEY} config is malformed: {error}") from None


class AtlasAccumulator:
    """Kernel-weighted sums of normal slices per bin, one batch at a time, so that no volume set has to fit
    in memory; :meth:`atlas` turns them into means and spreads."""

    def __init__(self, config: AtlasConfig, resolution: int) -> None:
        self.config = config
        self.resolution = resolution
        shape = (config.bins, resolution, resolution)
        self.weight = torch.zeros(config.bins, dtype=torch.float64)
        self.sum = torch.zeros(shape, dtype=torch.float64)
        self.sum_of_squares = torch.zeros(shape, dtype=torch.float64)

    def add(self, x: torch.Tensor, positions: torch.Tensor) -> None:
        """Add ``(N, res, res)`` normal slices in [-1, 1] at ``positions`` (N,) on the model's scale."""
        if x.ndim != 3 or x.shape[1:] != (self.resolution, self.resolution) or positions.shape != x.shape[:1]:
            raise ConfigError(
                f"atlas slices must be (N, {self.resolution}, {self.resolution}) with N positions, got "
                f"{tuple(x.shape)} and {tuple(positions.shape)}"
            )
        distance = (
            self.config.centres[:, None] - positions.double().clamp(0, 1)[None, :]
        ) / self.config.bandwidth
        weights = torch.exp(-0.5 * distance**2)  # (bins, N)
        flat = x.double().reshape(len(x), -1)
        self.weight += weights.sum(dim=1)
        self.sum += (weights @ flat).reshape(self.sum.shape)
        self.sum_of_squares += (weights @ flat**2).reshape(self.sum.shape)

    def atlas(self) -> PositionAtlas:
        """The atlas of everything added.

        Raises:
            ConfigError: nothing was added.
        """
        if float(self.weight.sum()) <= 0:
            raise ConfigError("the atlas needs at least one normal slice")
        weight = self.weight.clamp_min(1e-12)[:, None, None]
        mean = self.sum / weight
        variance = (self.sum_of_squares / weight - mean**2).clamp_min(0.0)
        atlas = PositionAtlas(self.config, self.resolution)
        atlas.mean.copy_(mean.float())
        atlas.std.copy_(variance.sqrt().clamp_min(self.config.std_floor).float())
        return atlas
