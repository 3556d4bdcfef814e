"""Position-conditioned StyleGAN2 generator: mapping network + skip-architecture synthesis network."""

from __future__ import annotations

import torch
from torch import nn

from AnomalyScoutLib.nets.architecture import ArchitectureConfig
from AnomalyScoutLib.nets.layers import EqualLinear, FourierPosition, ModulatedConv2d, ToGray, upsample

__all__ = ["Generator", "MappingNetwork", "SynthesisNetwork", "check_position"]

#: Number of z samples averaged by :meth:`Generator.mean_w`; fixed seed so the mean latent is reproducible.
MEAN_W_SAMPLES = 256
MEAN_W_SEED = 20240601


def _normalize_2nd_moment(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


def check_position(position: torch.Tensor, batch: int) -> None:
    """Raises a ValueError naming the problem when ``position`` is not an (N,) tensor matching the batch."""
    if position.shape != (batch,):
        raise ValueError(f"`position` must have shape ({batch},), got {tuple(position.shape)}")


class MappingNetwork(nn.Module):
    """z (+ slice position) -> w.

    The position enters as Fourier features, embedded and normalised like z, then concatenated to the
    normalised z (StyleGAN2-ADA's conditioning scheme): both halves have the same scale whatever their widths.
    """

    def __init__(self, config: ArchitectureConfig) -> None:
        super().__init__()
        self.z_dim, self.w_dim, self.conditional = config.z_dim, config.w_dim, config.conditional
        in_features = config.z_dim
        if config.conditional:
            self.fourier = FourierPosition(config.position_frequencies)
            self.embed = EqualLinear(self.fourier.num_features, config.w_dim)
            in_features += config.w_dim
        self.layers = nn.Sequential(
            *(
                EqualLinear(
                    in_features if i == 0 else config.w_dim,
                    config.w_dim,
                    lr_multiplier=0.01,
                    activation="lrelu",
                )
                for i in range(config.mapping_layers)
            )
        )

    def forward(self, z: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"`z` must have shape (N, {self.z_dim}), got {tuple(z.shape)}")
        check_position(position, z.shape[0])
        x = _normalize_2nd_moment(z)
        if self.conditional:
            x = torch.cat([x, _normalize_2nd_moment(self.embed(self.fourier(position)))], dim=1)
        return self.layers(x)


class SynthesisNetwork(nn.Module):
    """W+ (N, num_ws, w_dim) -> image (N, 1, res, res).

    Skip architecture: every resolution adds its single-channel ToGray output to the upsampled image so far.
    w index layout (as in StyleGAN2): level 4 uses ws[0] (conv) and ws[1] (ToGray); each further level uses
    ws[i] (upsampling conv), ws[i+1] (conv) and ws[i+2] (ToGray), i advancing by 2.
    """

    def __init__(self, config: ArchitectureConfig) -> None:
        super().__init__()
        self.resolution, self.w_dim, self.num_ws = config.resolution, config.w_dim, config.num_ws
        c4 = config.channels_at(4)
        self.const = nn.Parameter(torch.randn(1, c4, 4, 4))
        self.conv4 = ModulatedConv2d(c4, c4, config.w_dim, 4)
        self.gray4 = ToGray(c4, config.w_dim)
        self.convs_up = nn.ModuleList()
        self.convs = nn.ModuleList()
        self.grays = nn.ModuleList()
        resolution = 8
        while resolution <= config.resolution:
            c_in, c_out = config.channels_at(resolution // 2), config.channels_at(resolution)
            self.convs_up.append(ModulatedConv2d(c_in, c_out, config.w_dim, resolution, up=True))
            self.convs.append(ModulatedConv2d(c_out, c_out, config.w_dim, resolution))
            self.grays.append(ToGray(c_out, config.w_dim))
            resolution *= 2

    def forward(self, ws: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"`ws` must have shape (N, {self.num_ws}, {self.w_dim}), got {tuple(ws.shape)}")
        x = self.const.expand(ws.shape[0], -1, -1, -1)
        x = self.conv4(x, ws[:, 0], noise_mode)
        image = self.gray4(x, ws[:, 1])
        for level, (conv_up, conv, gray) in enumerate(zip(self.convs_up, self.convs, self.grays)):
            i = 1 + 2 * level
            x = conv_up(x, ws[:, i], noise_mode)
            x = conv(x, ws[:, i + 1], noise_mode)
            image = upsample(image) + gray(x, ws[:, i + 2])
        return image


class Generator(nn.Module):
    """Mapping + synthesis, with the mean latent per slice position used as the inversion starting point.

    Example:
        >>> g = Generator(preset("cpu-small"))
        >>> ws = g.mapping(torch.randn(4, g.z_dim), torch.rand(4))
        >>> images = g.synthesis(ws, noise_mode="const")  # (4, 1, 128, 128)
    """

    def __init__(self, config: ArchitectureConfig) -> None:
        super().__init__()
        self.config = config
        self.z_dim, self.w_dim, self.num_ws = config.z_dim, config.w_dim, config.num_ws
        self.mapping_network = MappingNetwork(config)
        self.synthesis = SynthesisNetwork(config)

    def mapping(self, z: torch.Tensor, position: torch.Tensor, *, truncation: float = 1.0) -> torch.Tensor:
        """z (N, z_dim) and position (N,) -> ws (N, num_ws, w_dim), the same w broadcast to every layer.

        ``truncation < 1`` pulls w towards :meth:`mean_w` at the same position (cleaner, less varied samples).
        """
        w = self.mapping_network(z, position)
        if truncation != 1.0:
            w = torch.lerp(self.mean_w(position), w, truncation)
        return w[:, None].repeat(1, self.num_ws, 1)

    @torch.no_grad()
    def mean_w(self, position: torch.Tensor) -> torch.Tensor:
        """Mean of the mapping over a fixed set of z at each position -> (N, w_dim).

        Computed on the fly from a seeded z batch, so it is exact for the current weights and reproducible.
        """
        if position.ndim != 1:
            raise ValueError(f"`position` must have shape (N,), got {tuple(position.shape)}")
        z = torch.randn(MEAN_W_SAMPLES, self.z_dim, generator=torch.Generator().manual_seed(MEAN_W_SEED))
        z = z.to(position.device)
        if not self.config.conditional:
            return (
                self.mapping_network(z, position.new_zeros(MEAN_W_SAMPLES))
                .mean(dim=0)
                .expand(len(position), -1)
            )
        batch = len(position)
        z_all = z.repeat(batch, 1)
        positions = position.repeat_interleave(MEAN_W_SAMPLES)
        return self.mapping_network(z_all, positions).reshape(batch, MEAN_W_SAMPLES, -1).mean(dim=1)

    def forward(
        self, z: torch.Tensor, position: torch.Tensor, *, noise_mode: str = "random", truncation: float = 1.0
    ) -> torch.Tensor:
        """Samples images at the given slice positions."""
        return self.synthesis(self.mapping(z, position, truncation=truncation), noise_mode=noise_mode)
