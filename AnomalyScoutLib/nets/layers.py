"""Building blocks shared by the generator, the discriminator and the encoder.

Weights use StyleGAN's *equalised learning rate*: parameters are stored with unit variance and scaled at run
time by ``1/sqrt(fan_in)``, so Adam's per-parameter step is the same for every layer whatever its fan-in.

Every constant factor that follows a layer (the leaky ReLU's gain, a residual branch's ``sqrt(1/2)``) is
folded into that run-time weight scale instead of multiplying the activations: leaky ReLU is positively
homogeneous, so ``lrelu(a * z) = a * lrelu(z)`` for ``a > 0``. The maths is the same up to float rounding,
and on CPU the small networks here spend most of their time in such full-size elementwise passes, not in
the convolutions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LRELU_GAIN",
    "EqualConv2d",
    "EqualLinear",
    "FourierPosition",
    "ModulatedConv2d",
    "ToGray",
    "downsample",
    "minibatch_std",
    "upsample",
]

#: Leaky ReLU(0.2) followed by this gain keeps activations at unit variance (He initialisation for lrelu).
LRELU_GAIN = math.sqrt(2.0)


def _activation_gain(activation: str) -> float:
    """The gain a layer folds into its weights and bias for its activation (see the module docstring)."""
    if activation not in ("linear", "lrelu"):
        raise ValueError(f"`activation` must be 'linear' or 'lrelu', got {activation!r}")
    return LRELU_GAIN if activation == "lrelu" else 1.0


def upsample(x: torch.Tensor) -> torch.Tensor:
    """Doubles the spatial size bilinearly (StyleGAN2 uses an FIR filter; bilinear is close and simpler)."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def downsample(x: torch.Tensor) -> torch.Tensor:
    """Halves the spatial size by 2x2 averaging, the adjoint of the bilinear upsampling up to a blur."""
    return F.avg_pool2d(x, 2)


class EqualLinear(nn.Module):
    """Fully connected layer with equalised learning rate.

    Args:
        in_features: input width.
        out_features: output width.
        bias_init: initial bias value (1 for style affines so that modulation starts as identity).
        lr_multiplier: scales the effective learning rate (0.01 in the mapping network, as in StyleGAN).
        activation: ``"linear"`` or ``"lrelu"``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias_init: float = 0.0,
        lr_multiplier: float = 1.0,
        activation: str = "linear",
    ) -> None:
        super().__init__()
        gain = _activation_gain(activation)
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_multiplier))
        self.weight_gain = gain * lr_multiplier / math.sqrt(in_features)
        self.bias_gain = gain * lr_multiplier
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        return F.leaky_relu(x, 0.2, inplace=True) if self.activation == "lrelu" else x


class EqualConv2d(nn.Module):
    """Plain convolution with equalised learning rate ("same" padding), optionally followed by leaky ReLU.

    Args:
        output_scale: a positive constant the output is multiplied by (folded into the weights), e.g. the
            ``sqrt(1/2)`` of a residual sum.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        bias: bool = True,
        activation: str = "lrelu",
        output_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if not output_scale > 0:
            raise ValueError(f"`output_scale` must be positive, got {output_scale}")
        self.output_gain = _activation_gain(activation) * output_scale
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = self.output_gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias * self.output_gain
        if self.weight.shape[1:] == (1, 1, 1):
            x = self._per_channel_affine(x, bias)
        else:
            x = F.conv2d(x, self.weight * self.weight_gain, bias, padding=self.padding)
        return F.leaky_relu(x, 0.2, inplace=True) if self.activation == "lrelu" else x

    def _per_channel_affine(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """A 1x1 convolution of a one-channel image (FromGray): pixel value times a weight per output channel.

        Broadcast over the pixels in NHWC order it is ~10x faster on CPU than oneDNN's convolution for this
        shape, and the result is channels_last memory (callers that want NCHW convert it).
        """
        y = x.permute(0, 2, 3, 1) * (self.weight * self.weight_gain).view(-1)
        if bias is not None:
            y = y + bias
        return y.permute(0, 3, 1, 2)


class ModulatedConv2d(nn.Module):
    """StyleGAN2's modulated (and demodulated) 3x3 convolution with a per-layer noise input.

    The style ``s = A(w)`` scales the input channels of the weight per sample; demodulation rescales each
    output channel to unit expected variance, which replaces AdaIN without its droplet artefacts. The noise
    input adds ``strength * noise`` per pixel; ``noise_mode="const"`` uses a fixed map stored in the model so
    that inversion cannot explain an anomaly away with freshly drawn noise.

    Args:
        in_channels: input feature maps.
        out_channels: output feature maps.
        w_dim: width of the latent ``w``.
        resolution: output size (needed for the constant noise map).
        up: upsample the input by 2 before the convolution.
    """

    def __init__(
        self, in_channels: int, out_channels: int, w_dim: int, resolution: int, *, up: bool = False
    ) -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros(()))
        generator = torch.Generator().manual_seed(resolution * 1009 + out_channels)
        self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution, generator=generator))
        self.weight_gain = 1.0 / math.sqrt(in_channels * 9)
        self.up = up
        self.resolution = resolution

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        styles = self.affine(w)  # (N, in)
        weight = self.weight * self.weight_gain
        # Modulating the activations instead of the weights is mathematically the same and avoids a grouped
        # convolution per sample, which is several times slower on CPU.
        squared_norms = (weight.square().sum(dim=(2, 3))[None] * styles.square()[:, None]).sum(dim=2)
        demod = torch.rsqrt(squared_norms + 1e-8)  # (N, out)
        # Scaling channels commutes with the per-channel linear upsampling: modulate at the lower resolution.
        x = x * styles[:, :, None, None]
        if self.up:
            x = upsample(x)
        x = F.conv2d(x, weight, padding=1)
        # lrelu(conv * demod + noise + bias) * gain as one fused multiply-add and the activation in place; the
        # offset (noise and bias, gain folded in) is a single (1, C, H, W) map in the constant-noise mode.
        offset = self.noise_strength * self._noise(x, noise_mode) + self.bias[None, :, None, None]
        offset = offset * LRELU_GAIN
        if x.is_contiguous(memory_format=torch.channels_last):
            # addcmul's result takes its first operand's layout, and reading NCHW against NHWC is 2x slower.
            offset = offset.contiguous(memory_format=torch.channels_last)
        x = torch.addcmul(offset, x, demod[:, :, None, None] * LRELU_GAIN)
        return F.leaky_relu(x, 0.2, inplace=True)

    def _noise(self, x: torch.Tensor, noise_mode: str) -> torch.Tensor:
        if noise_mode == "const":
            return self.noise_const
        if noise_mode == "random":
            return torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype)
        if noise_mode == "none":
            return torch.zeros((), device=x.device, dtype=x.dtype)
        raise ValueError(f"`noise_mode` must be 'const', 'random' or 'none', got {noise_mode!r}")


class ToGray(nn.Module):
    """Modulated 1x1 convolution to the single CT channel, without demodulation (it sets the output scale)."""

    def __init__(self, in_channels: int, w_dim: int) -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(1, in_channels))
        self.bias = nn.Parameter(torch.zeros(1))
        self.weight_gain = 1.0 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain  # (N, in)
        return torch.einsum("nchw,nc->nhw", x, styles * self.weight[0])[:, None] + self.bias


class FourierPosition(nn.Module):
    """Fixed Fourier features of a relative slice position p in [0, 1].

    ``[sin(2^k pi p), cos(2^k pi p)]`` for k < ``num_frequencies`` lets a small MLP tell pelvis from liver
    dome with both coarse and fine resolution along the body axis.
    """

    def __init__(self, num_frequencies: int) -> None:
        super().__init__()
        if num_frequencies < 1:
            raise ValueError(f"`num_frequencies` must be >= 1, got {num_frequencies}")
        frequencies = math.pi * 2.0 ** torch.arange(num_frequencies, dtype=torch.float32)
        # Not saved: it is a constant, and fp16 model storage would round the high frequencies.
        self.register_buffer("frequencies", frequencies, persistent=False)
        self.num_features = 2 * num_frequencies

    def forward(self, position: torch.Tensor) -> torch.Tensor:
        if position.ndim != 1:
            raise ValueError(f"`position` must have shape (N,), got {tuple(position.shape)}")
        angles = position.to(self.frequencies.dtype)[:, None] * self.frequencies
        return torch.cat([angles.sin(), angles.cos()], dim=1)


def minibatch_std(x: torch.Tensor, group_size: int = 4) -> torch.Tensor:
    """Appends one feature map: the standard deviation across groups of samples (D sees a collapsed batch).

    The group is the largest divisor of the batch not above ``group_size`` so that any batch size works.
    """
    batch, channels, height, width = x.shape
    group = max(g for g in range(1, min(group_size, batch) + 1) if batch % g == 0)
    y = x.reshape(group, -1, channels, height, width)
    y = (y - y.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt()  # (N/G, C, H, W)
    y = y.mean(dim=(1, 2, 3)).reshape(-1, 1, 1, 1).repeat(group, 1, height, width)
    return torch.cat([x, y], dim=1)
