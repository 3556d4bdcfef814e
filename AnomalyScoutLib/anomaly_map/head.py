"""The discriminative head: a small U-Net that turns [slice, reconstruction, position] into an anomaly map.

A pixel residual cannot tell a lesion from what the generator misses in every normal slice (organ edges,
bowel gas, noise); DRAEM's discriminative network learns that difference from synthetic anomalies instead.
This head sees the CT slice, the GAN's pseudo-normal reconstruction and their difference (when
``use_reconstruction``), and a constant channel with the slice's relative position (when ``use_position``),
and, when ``use_atlas``, how unusual each pixel is for its position in the model's per-position atlas
(``log(1 + |x - mean| / std)``: what tissue belongs *where*, which a reconstruction that redraws whatever the
encoder reads cannot say), and outputs one logit per pixel. The anomaly map is the sigmoid inside the body;
a slice's score is the mean of the map's top ``top_fraction`` of body pixels (FPI's top-quartile mean,
narrower for small lesions).

It must cost little next to fast mode (≤ 20 % of its time), so it is narrow, has no normalisation layers
(full-size elementwise passes dominate at these widths on CPU) and runs in ``channels_last``.

Example:
    >>> head = AnomalyHead(HeadConfig(channels=(8, 16, 32)))
    >>> head.anomaly_map(x, recon, positions, body).shape   # (N, H, W) in [0, 1]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.nets.unet import UNet2d
from AnomalyScoutLib.part_config import part_from_metadata, settings_from_dict
from AnomalyScoutLib.scoring import top_fraction_mean

if TYPE_CHECKING:
    from AnomalyScoutLib.position_atlas import PositionAtlas

__all__ = ["HEAD_KEY", "AnomalyHead", "HeadConfig", "head_from_metadata"]

#: Prefix of the head's tensors, and key of its JSON ``{"config": {...}, "training": {...}}`` in a model file.
HEAD_KEY = "head"


@dataclass(frozen=True)
class HeadConfig:
    """What the head sees and how big it is (stored in the model file's ``"head"`` metadata).

    Attributes:
        channels: feature channels per U-Net level, finest first (at least two levels).
        use_reconstruction: feed the reconstruction and the difference image (off: the slice alone, to
            measure what the GAN adds).
        use_position: feed the relative slice position as a constant channel.
        use_atlas: feed the slice's log z-map against the model's position atlas (the model file must hold
            the atlas; :meth:`AnomalyHead.read_atlas` links it).
        top_fraction: share of body pixels whose mean map value is the slice score.
        stride: the U-Net runs at 1/stride of the slice's resolution: a stride x stride convolution in and
            a transposed one out (2: a quarter of the pixels, what keeps the head cheap next to fast mode).
    """

    channels: tuple[int, ...] = (8, 16, 32)
    use_reconstruction: bool = True
    use_position: bool = True
    use_atlas: bool = False
    top_fraction: float = 0.01
    stride: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if len(self.channels) < 2 or min(self.channels) < 1:
            raise ConfigError(f"head channels need at least two positive levels, got {self.channels}")
        if not 0.0 < self.top_fraction <= 1.0:
            raise ConfigError(f"head top_fraction must be in (0, 1], got {self.top_fraction}")
        if self.stride not in (1, 2, 4):
            raise ConfigError(f"head stride must be 1, 2 or 4, got {self.stride}")

    @property
    def in_channels(self) -> int:
        return 1 + 2 * self.use_reconstruction + self.use_position + self.use_atlas

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "channels": list(self.channels)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeadConfig:
        """The inverse of :meth:`to_dict`; unknown keys are refused (a newer file, or a typo)."""
        return settings_from_dict(cls, data, "head")


class AnomalyHead(UNet2d):
    """The U-Net (:class:`~AnomalyScoutLib.nets.unet.UNet2d`) from the stacked inputs to one logit map at the
    input's resolution."""

    def __init__(self, config: HeadConfig | None = None) -> None:
        config = config or HeadConfig()
        super().__init__(config.in_channels, config.channels, config.stride)
        self.config = config
        # In a tuple, so that the atlas is not a sub-module: its tensors belong to the model, not the head.
        self._atlas: tuple[PositionAtlas, ...] = ()

    def read_atlas(self, atlas: PositionAtlas | None) -> None:
        """Link the model's atlas, which a ``use_atlas`` head reads (None unlinks it)."""
        self._atlas = () if atlas is None else (atlas,)

    def inputs(
        self, image: torch.Tensor, reconstruction: torch.Tensor | None, position: torch.Tensor
    ) -> torch.Tensor:
        """The ``(N, C, H, W)`` network input from ``(N, H, W)`` slices and ``(N,)`` positions."""
        if image.ndim != 3 or position.shape != (image.shape[0],):
            raise ValueError(
                f"need image (N, H, W) and position (N,), got {tuple(image.shape)}, {tuple(position.shape)}"
            )
        if image.shape[-1] % self.size_multiple or image.shape[-2] % self.size_multiple:
            raise ValueError(f"image height and width must be multiples of {self.size_multiple}")
        planes = [image]
        if self.config.use_reconstruction:
            if reconstruction is None or reconstruction.shape != image.shape:
                raise ValueError("this head needs a reconstruction of the image's shape")
            planes += [reconstruction, image - reconstruction]
        if self.config.use_position:
            planes.append(position.to(image.dtype)[:, None, None].expand_as(image))
        if self.config.use_atlas:
            if not self._atlas:
                raise ValueError("this head reads a position atlas and none is linked (read_atlas)")
            planes.append(torch.log1p(self._atlas[0].z_maps(image, position)).to(image.dtype))
        return torch.stack(planes, dim=1)

    def forward(
        self, image: torch.Tensor, reconstruction: torch.Tensor | None, position: torch.Tensor
    ) -> torch.Tensor:
        """Per-pixel anomaly logits ``(N, H, W)``."""
        return self.unet(self.inputs(image, reconstruction, position))[:, 0]

    def anomaly_map(
        self,
        image: torch.Tensor,
        reconstruction: torch.Tensor | None,
        position: torch.Tensor,
        body: torch.Tensor,
    ) -> torch.Tensor:
        """Anomaly probabilities ``(N, H, W)`` in [0, 1], 0 outside the boolean ``body``."""
        return torch.sigmoid(self(image, reconstruction, position).float()) * body

    def slice_scores(self, maps: torch.Tensor, body: torch.Tensor) -> torch.Tensor:
        """Slice scores ``(N,)``: the mean of the top ``top_fraction`` of each map's body pixels."""
        return top_fraction_mean(maps, body, self.config.top_fraction)


def head_from_metadata(info: Any) -> AnomalyHead:
    """A fresh head built from a model file's ``metadata["head"]`` entry (weights loaded by the caller).

    Raises:
        ConfigError: the entry is not ``{"config": {...}, ...}`` with valid settings.
    """
    return part_from_metadata(info, "head", lambda config: AnomalyHead(HeadConfig.from_dict(config)))
