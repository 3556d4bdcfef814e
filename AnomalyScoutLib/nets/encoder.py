"""Encoder: slice (+ position) -> W+ code for the frozen generator (f-AnoGAN's izi_f encoder, StyleGAN-style).

It predicts *offsets* from the generator's mean latent at the slice position, so an untrained encoder already
returns the "average slice at this position" and training only has to learn the deviation. The same offsets
make the encoder's code space easy to narrow after training (:meth:`Encoder.constrain`): a generator that can
draw a lesion draws it back into the reconstruction whenever the code lets it, and a code pulled towards the
typical slice at its position (and shared by all layers, W instead of W+) lets it do so less
(``benchmarks/code_space.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.nets.architecture import ArchitectureConfig
from AnomalyScoutLib.nets.discriminator import ResidualTrunk
from AnomalyScoutLib.nets.generator import Generator, check_position
from AnomalyScoutLib.nets.layers import EqualLinear, FourierPosition

__all__ = ["MEAN_W_BINS", "Encoder"]

#: Positions at which the encoder tabulates the generator's mean latent (linear interpolation between them).
MEAN_W_BINS = 65


class Encoder(nn.Module):
    """Residual conv trunk -> MLP head -> ws (N, num_ws, w_dim) = mean_w(position) + offset.

    The mean latents are a buffer (``mean_w_table``, filled by :meth:`anchor_to`) so that the encoder is
    self-contained in the model file: it does not need the mapping network at inference.
    """

    def __init__(self, config: ArchitectureConfig) -> None:
        super().__init__()
        self.config = config
        self.num_ws, self.w_dim = config.num_ws, config.w_dim
        self.trunk = ResidualTrunk(config)
        c4 = self.trunk.out_channels
        self.fourier = FourierPosition(config.position_frequencies)
        position_features = self.fourier.num_features if config.conditional else 0
        self.fc = EqualLinear(c4 * 16 + position_features, 2 * config.w_dim, activation="lrelu")
        self.out = EqualLinear(2 * config.w_dim, config.num_ws * config.w_dim)
        with torch.no_grad():
            self.out.weight.mul_(0.1)  # start close to the mean latent
        self.register_buffer("mean_w_table", torch.zeros(MEAN_W_BINS, config.w_dim))

    @torch.no_grad()
    def anchor_to(self, generator: Generator) -> None:
        """Tabulates ``generator.mean_w`` at evenly spaced positions: the origin of the predicted offsets."""
        grid = torch.linspace(0.0, 1.0, MEAN_W_BINS, device=self.mean_w_table.device)
        self.mean_w_table.copy_(generator.mean_w(grid).to(self.mean_w_table))

    def mean_w(self, position: torch.Tensor) -> torch.Tensor:
        """Linear interpolation of the tabulated mean latent -> (N, w_dim)."""
        scaled = position.clamp(0.0, 1.0).to(self.mean_w_table.dtype) * (MEAN_W_BINS - 1)
        low = scaled.floor().long().clamp(max=MEAN_W_BINS - 2)
        frac = (scaled - low)[:, None]
        return torch.lerp(self.mean_w_table[low], self.mean_w_table[low + 1], frac)

    @torch.no_grad()
    def constrain(self, offset_scale: float = 1.0, single_w: bool = False) -> None:
        """Narrows the code space in place by transforming the last (linear) layer.

        Args:
            offset_scale: multiplies the predicted offsets from the mean latent (the truncation trick applied
                to the encoding: 1 = unchanged, 0 = the mean latent at the slice's position for every slice).
            single_w: average the offsets over the synthesis layers, so that every layer gets the same w.

        Raises:
            ConfigError: ``offset_scale`` is negative.
        """
        if offset_scale < 0:
            raise ConfigError(f"offset scale must be >= 0, got {offset_scale}")
        layer = self.out
        if single_w:
            weight = layer.weight.reshape(self.num_ws, self.w_dim, -1).mean(dim=0, keepdim=True)
            bias = layer.bias.reshape(self.num_ws, self.w_dim).mean(dim=0, keepdim=True)
            layer.weight.copy_(weight.expand(self.num_ws, -1, -1).reshape_as(layer.weight))
            layer.bias.copy_(bias.expand(self.num_ws, -1).reshape_as(layer.bias))
        layer.weight.mul_(offset_scale)
        layer.bias.mul_(offset_scale)

    def forward(self, x: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        check_position(position, x.shape[0])
        h = self.trunk(x).flatten(1)
        if self.config.conditional:
            h = torch.cat([h, self.fourier(position)], dim=1)
        offsets = self.out(self.fc(h)).reshape(-1, self.num_ws, self.w_dim)
        return self.mean_w(position)[:, None] + offsets
