"""A small 2-D U-Net for liver segmentation of axial CT slices.

The benchmark and the active-learning simulation need a segmentation model that trains in seconds on a CPU, so
this is the classic U-Net (Ronneberger et al. 2015) scaled down: a few levels of two 3×3 convolutions,
GroupNorm instead of BatchNorm (MC-dropout runs the network in train mode on single slices, where batch
statistics would be meaningless) and Dropout2d in the bottleneck and decoder so that MC-dropout has something
to sample. It is written here rather than taken from MONAI to avoid a heavy dependency for ~100 lines.

Example:
    >>> net = UNet(channels=(8, 16, 32))
    >>> net(torch.zeros(2, 1, 64, 64)).shape
    torch.Size([2, 1, 64, 64])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["UNet"]


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3×3 convolutions, each followed by GroupNorm and ReLU."""
    groups = math.gcd(8, out_channels)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.GroupNorm(groups, out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.GroupNorm(groups, out_channels),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net returning one logit map per output channel at the input's resolution.

    Args:
        in_channels: channels of the input slices (1 for CT).
        out_channels: output logit channels (1 for a binary liver mask).
        channels: feature channels per level, from the finest to the bottleneck; at least two levels. The
            input's height and width must be divisible by ``2 ** (len(channels) - 1)``.
        dropout: Dropout2d probability in the bottleneck and decoder (0 disables it, and with it MC-dropout).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2:
            raise ValueError(f"`channels` needs at least two levels, got {channels}")
        if any(c < 1 for c in channels) or in_channels < 1 or out_channels < 1:
            raise ValueError("`in_channels`, `out_channels` and every entry of `channels` must be positive")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout}")
        self.channels = channels
        self.down = nn.ModuleList()
        previous = in_channels
        for width in channels:
            self.down.append(_conv_block(previous, width))
            previous = width
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout2d(dropout)
        self.upsample = nn.ModuleList()
        self.up = nn.ModuleList()
        for coarse, fine in zip(channels[:0:-1], channels[-2::-1]):
            self.upsample.append(nn.ConvTranspose2d(coarse, fine, 2, stride=2))
            self.up.append(_conv_block(2 * fine, fine))
        self.head = nn.Conv2d(channels[0], out_channels, 1)

    @property
    def size_multiple(self) -> int:
        """Height and width of an input must be multiples of this."""
        return 2 ** (len(self.channels) - 1)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(f"expected input of shape (N, C, H, W), got {tuple(x.shape)}")
        if x.shape[-1] % self.size_multiple or x.shape[-2] % self.size_multiple:
            raise ValueError(
                f"input height and width must be multiples of {self.size_multiple}, got {tuple(x.shape[-2:])}"
            )

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of every level, finest first; the last one is the (dropped-out) bottleneck."""
        self._check_input(x)
        skips = []
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else self.pool(x))
            skips.append(x)
        skips[-1] = self.dropout(skips[-1])
        return skips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = self._encode(x)
        x = skips[-1]
        for upsample, block, skip in zip(self.upsample, self.up, skips[-2::-1]):
            x = self.dropout(block(torch.cat([upsample(x), skip], dim=1)))
        return self.head(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Global average of the bottleneck, (N, channels[-1]): what the coreset baseline compares."""
        return self._encode(x)[-1].mean(dim=(2, 3))
