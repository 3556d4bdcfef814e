"""Normal training slices for the head: the engine's preprocessing plus the body mask and the volume of
each slice.

The head is trained on slices from the GAN's own normal training volumes; the body mask says where
synthetic anomalies may go and where the map counts, and the volume index lets a foreign patch come from
another patient and keeps validation volumes apart from training volumes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from AnomalyScoutLib.errors import ConfigError, VolumeError
from AnomalyScoutLib.preprocessing import HUWindow
from AnomalyScoutLib.train.data import (
    DEFAULT_MIN_BODY_FRACTION,
    merge_out_of_range,
    no_slice_left,
    preprocess_volumes,
)

if TYPE_CHECKING:
    from AnomalyScoutLib.position.network import PositionRegressor

__all__ = ["NormalSlices", "load_normal_slices"]


@dataclass(frozen=True)
class NormalSlices:
    """Normal model-grid slices ``images`` (N, H, W) in [-1, 1], ``positions`` (N,), boolean ``body``
    (N, H, W) and ``volume`` (N,) indices; ``out_of_range``: slices the range gate dropped when loading, by
    reason (None: placed by index; subsets do not carry it)."""

    images: torch.Tensor
    positions: torch.Tensor
    body: torch.Tensor
    volume: torch.Tensor
    out_of_range: dict[str, int] | None = None

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 3 or self.body.shape != self.images.shape:
            raise ValueError(f"images and body must be (N, H, W) alike, got {tuple(self.images.shape)}")
        if self.positions.shape != (n,) or self.volume.shape != (n,):
            raise ValueError("positions and volume need one entry per slice")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, keep: torch.Tensor) -> NormalSlices:
        return NormalSlices(self.images[keep], self.positions[keep], self.body[keep], self.volume[keep])

    def split(self, validation_volumes: int) -> tuple[NormalSlices, NormalSlices]:
        """``(training, validation)``: the last ``validation_volumes`` volumes are kept for validation."""
        volumes = torch.unique(self.volume)
        if not 1 <= validation_volumes < len(volumes):
            raise ConfigError(
                f"validation volumes must be 1 to {len(volumes) - 1} (of {len(volumes)}), "
                f"got {validation_volumes}"
            )
        held = torch.isin(self.volume, volumes[-validation_volumes:])
        return self.subset(~held), self.subset(held)


def load_normal_slices(
    paths: Iterable[Path],
    resolution: int,
    window: HUWindow,
    *,
    position_method: str = "index",
    min_body_fraction: float = DEFAULT_MIN_BODY_FRACTION,
    progress: bool = False,
    regressor: PositionRegressor | None = None,
) -> NormalSlices:
    """Read normal volumes as :class:`NormalSlices` (slices with too little body left out, as for the GAN;
    with ``regressor``, placed by anatomy and range-gated as for the GAN).

    Raises:
        VolumeError: a volume cannot be read, or no slice is left.
    """
    images, positions, bodies, volumes, out_of_range = [], [], [], [], None
    volumes_read = preprocess_volumes(
        list(paths), resolution, window, position_method, min_body_fraction, progress, regressor=regressor
    )
    for index, volume in enumerate(volumes_read):
        images.append(volume.images[:, 0].float())
        positions.append(volume.positions)
        bodies.append(volume.body)
        volumes.append(torch.full((len(volume.positions),), index, dtype=torch.long))
        out_of_range = merge_out_of_range(out_of_range, volume.out_of_range)
    if sum(len(p) for p in positions) == 0:
        raise VolumeError(no_slice_left(min_body_fraction, "the volumes given", out_of_range))
    return NormalSlices(
        torch.cat(images), torch.cat(positions), torch.cat(bodies), torch.cat(volumes), out_of_range
    )
