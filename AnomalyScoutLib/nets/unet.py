"""A small 2-D U-Net: the body shared by the anomaly-map head and the denoiser.

Max-pool down, bilinear up, skip concatenation, two 3x3 convolutions a level, between a ``stride x stride``
stem and a transposed output convolution (stride 2 runs the U-Net on a quarter of the pixels; stride 1 at
full resolution). No normalisation layers: at these widths full-size elementwise passes dominate on a CPU,
and the weights are kept in ``channels_last``, where oneDNN's kernels are about 4x faster.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet2d"]


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.LeakyReLU(0.2, inplace=True),
    )


class UNet2d(nn.Module):
    """``(N, in_channels, H, W)`` -> ``(N, 1, H, W)``; H and W must be multiples of :attr:`size_multiple`.

    Args:
        in_channels: input planes.
        widths: feature channels per level, finest first (at least two levels).
        stride: the stem's and the output's stride (1, 2 or 4).
    """

    def __init__(self, in_channels: int, widths: Sequence[int], stride: int) -> None:
        super().__init__()
        widths = tuple(widths)
        self._levels, self._stride = len(widths), stride
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], stride, stride=stride), nn.LeakyReLU(0.2, inplace=True)
        )
        self.down = nn.ModuleList()
        previous = widths[0]
        for width in widths:
            self.down.append(_block(previous, width))
            previous = width
        self.up = nn.ModuleList(
            _block(coarse + fine, fine) for coarse, fine in zip(widths[:0:-1], widths[-2::-1])
        )
        self.out = nn.ConvTranspose2d(widths[0], 1, stride, stride=stride)
        self.to(memory_format=torch.channels_last)

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this."""
        return self._stride * 2 ** (self._levels - 1)

    def unet(self, x: torch.Tensor) -> torch.Tensor:
        """The network on stacked inputs ``(N, C, H, W)``: one output plane ``(N, 1, H, W)``."""
        if x.device.type in ("cpu", "cuda"):
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.stem(x)
        skips = []
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, skips[-2::-1]):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.out(x)
