"""The architecture configuration shared by the three networks and stored in every model file.

A frozen dataclass rather than loose keyword dictionaries: validated once, written to JSON as-is and read
back with unknown keys refused, so a model file always rebuilds exactly the networks its tensors belong to.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from AnomalyScoutLib.errors import ConfigError

__all__ = ["PRESETS", "ArchitectureConfig", "preset"]


@dataclass(frozen=True)
class ArchitectureConfig:
    """Shapes of the generator, discriminator and encoder.

    Attributes:
        resolution: image side in pixels, a power of two from 8 to 1024.
        channels: feature maps at each resolution 4, 8, ..., ``resolution`` (one value per level).
        z_dim: width of the input noise z.
        w_dim: width of the intermediate latent w.
        mapping_layers: depth of the mapping MLP.
        position_frequencies: number of Fourier frequencies for the slice position.
        conditional: condition on the slice position; False gives the poster's unconditional baseline with the
            same code (the position is then ignored everywhere).
    """

    resolution: int
    channels: tuple[int, ...]
    z_dim: int = 128
    w_dim: int = 128
    mapping_layers: int = 4
    position_frequencies: int = 6
    conditional: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if self.resolution < 8 or self.resolution > 1024 or self.resolution & (self.resolution - 1):
            raise ConfigError(f"`resolution` must be a power of two in [8, 1024], got {self.resolution}")
        if len(self.channels) != self.num_levels:
            raise ConfigError(
                f"`channels` needs one width per resolution 4..{self.resolution} ({self.num_levels} values), "
                f"got {len(self.channels)}"
            )
        for name in ("z_dim", "w_dim", "mapping_layers", "position_frequencies"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if min(self.channels) < 1:
            raise ConfigError(f"`channels` must all be >= 1, got {self.channels}")

    @property
    def num_levels(self) -> int:
        """Number of resolutions 4, 8, ..., ``resolution``."""
        return int(math.log2(self.resolution)) - 1

    @property
    def num_ws(self) -> int:
        """Number of w vectors the synthesis network consumes (W+ has this many rows)."""
        return 2 * int(math.log2(self.resolution)) - 2

    def channels_at(self, resolution: int) -> int:
        """Feature maps at one resolution of the pyramid."""
        return self.channels[int(math.log2(resolution)) - 2]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (lists instead of tuples)."""
        data = dataclasses.asdict(self)
        data["channels"] = list(self.channels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchitectureConfig:
        """Rebuilds a configuration from :meth:`to_dict`; unknown or missing keys are errors, not guesses."""
        if not isinstance(data, dict):
            raise ConfigError(f"an architecture must be a JSON object, got {type(data).__name__}")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown architecture keys: {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as error:
            raise ConfigError(f"incomplete architecture: {error}") from None


def _widths(resolution: int, base: int, cap: int) -> tuple[int, ...]:
    """StyleGAN's rule: ``base / res`` channels per level, capped, so memory stays flat across resolutions."""
    levels = [2**k for k in range(2, int(math.log2(resolution)) + 1)]
    return tuple(min(cap, base // r) for r in levels)


#: Named configurations: GPU ones for 64-512 px, and two for 2 CPU cores: ``cpu-small`` (the first shipped
#: model) and ``cpu-mid`` (6x its compute per image; 2-3x slower to train in fp32 on AVX2 cores, almost
#: as fast as ``cpu-small`` where bf16 units exist: docs/training.md).
PRESETS: dict[str, ArchitectureConfig] = {
    "64": ArchitectureConfig(64, _widths(64, 16384, 512), z_dim=256, w_dim=256, mapping_layers=8),
    "128": ArchitectureConfig(128, _widths(128, 16384, 512), z_dim=256, w_dim=256, mapping_layers=8),
    "256": ArchitectureConfig(256, _widths(256, 16384, 512), z_dim=512, w_dim=512, mapping_layers=8),
    "512": ArchitectureConfig(512, _widths(512, 16384, 512), z_dim=512, w_dim=512, mapping_layers=8),
    "cpu-small": ArchitectureConfig(128, (64, 64, 32, 16, 8, 8), z_dim=128, w_dim=128, mapping_layers=4),
    "cpu-mid": ArchitectureConfig(128, (128, 128, 64, 32, 32, 16), z_dim=128, w_dim=128, mapping_layers=4),
}


def preset(name: str, *, conditional: bool = True) -> ArchitectureConfig:
    """Returns a named configuration, optionally unconditional (for the poster's baseline)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown configuration {name!r}; choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], conditional=conditional)
