"""Residual StyleGAN2 discriminator with minibatch standard deviation and projection conditioning."""

from __future__ import annotations

import math

import torch
from torch import nn

from AnomalyScoutLib.nets.architecture import ArchitectureConfig
from AnomalyScoutLib.nets.generator import check_position
from AnomalyScoutLib.nets.layers import EqualConv2d, EqualLinear, FourierPosition, downsample, minibatch_std

__all__ = ["Discriminator", "ResidualDownBlock", "ResidualTrunk", "check_image"]


def check_image(x: torch.Tensor, resolution: int) -> None:
    """Raises a ValueError naming the expected shape when ``x`` is not (N, 1, res, res)."""
    if x.ndim != 4 or x.shape[1:] != (1, resolution, resolution):
        raise ValueError(f"images must have shape (N, 1, {resolution}, {resolution}), got {tuple(x.shape)}")


class ResidualDownBlock(nn.Module):
    """conv3x3 -> conv3x3 -> /2, plus a 1x1 skip on the downsampled input; the sum is scaled by sqrt(1/2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        # The sum's sqrt(1/2) is folded into both branches' last layer (nets.layers: no extra pass).
        self.conv0 = EqualConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, output_scale=math.sqrt(0.5))
        self.skip = EqualConv2d(
            in_channels, out_channels, 1, bias=False, activation="linear", output_scale=math.sqrt(0.5)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.skip(downsample(x))
        return downsample(self.conv1(self.conv0(x))) + skip


class ResidualTrunk(nn.Module):
    """FromGray + residual blocks from ``resolution`` down to 4x4: the image backbone of D and the encoder."""

    def __init__(self, config: ArchitectureConfig) -> None:
        super().__init__()
        self.resolution = config.resolution
        self.from_gray = EqualConv2d(1, config.channels_at(config.resolution), 1)
        blocks = []
        resolution = config.resolution
        while resolution > 4:
            blocks.append(
                ResidualDownBlock(config.channels_at(resolution), config.channels_at(resolution // 2))
            )
            resolution //= 2
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = config.channels_at(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image(x, self.resolution)
        # A one-channel image is NCHW- and NHWC-contiguous at once, so from_gray cannot tell which layout
        # the caller chose (it returns NHWC). Put its output in the layout of the blocks' weights
        # (channels_last when inversion.Reconstructor chose it), or every full-resolution layer after it
        # runs on the slower path and pays a conversion.
        return self.blocks(self.from_gray(x).contiguous(memory_format=self._layout()))

    def _layout(self) -> torch.memory_format:
        if len(self.blocks) == 0:
            return torch.contiguous_format
        weight = self.blocks[0].conv0.weight
        if weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous():
            return torch.channels_last
        return torch.contiguous_format


class Discriminator(nn.Module):
    """Image (+ slice position) -> realness logit.

    Conditioning by projection (Miyato & Koyama): ``logit = psi(h) + <h, embed(position)> / sqrt(F)``, so D
    judges whether a slice looks right *for its position*. :meth:`features` exposes the 4x4 trunk
    output, taken before the minibatch-std layer so a slice's features never depend on the rest of its batch.
    """

    def __init__(self, config: ArchitectureConfig) -> None:
        super().__init__()
        self.config = config
        self.trunk = ResidualTrunk(config)
        c4 = self.trunk.out_channels
        self.conv = EqualConv2d(c4 + 1, c4, 3)
        self.fc = EqualLinear(c4 * 16, c4, activation="lrelu")
        self.out = EqualLinear(c4, 1)
        if config.conditional:
            fourier = FourierPosition(config.position_frequencies)
            self.embed = nn.Sequential(
                fourier,
                EqualLinear(fourier.num_features, c4, activation="lrelu"),
                EqualLinear(c4, c4),
            )
        self.feature_dim = c4 * 16

    def features(self, x: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Intermediate features (N, F) for the f-AnoGAN feature residual (``position``: for symmetry).

        The trunk is not position-conditioned (only the projection head is), so the features compare anatomy
        alone.
        """
        check_position(position, x.shape[0])
        return self.trunk(x).flatten(1)

    def forward(self, x: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Logits (N,)."""
        check_position(position, x.shape[0])
        h = self.fc(self.conv(minibatch_std(self.trunk(x))).flatten(1))
        logits = self.out(h)[:, 0]
        if self.config.conditional:
            logits = logits + (h * self.embed(position)).sum(dim=1) / math.sqrt(h.shape[1])
        return logits
