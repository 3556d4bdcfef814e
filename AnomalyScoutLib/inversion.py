"""Reconstructing the pseudo-normal version of CT slices with the trained generator.

Four modes, trading time for fidelity:

* ``fast``: one encoder pass, ``ws = E(x, p)``, then ``G(ws)``. Milliseconds per slice.
* ``accurate``: the encoder's ws refined for ``steps`` Adam steps (W+ by default). Encoders drop small normal
  details (pSp/e4e); a short refinement recovers them, while an anomaly, which the generator cannot produce,
  stays in the residual. Default steps and learning rate were chosen on phantom cases (``docs/speed.md``).
* ``projector``: the NVlabs projector as used by Woodland et al., kept for comparison: start from the mean
  latent at the slice's position, 1000 steps in W with decaying latent noise.
* ``denoise``: no generator at all. The model's coarse-noise denoiser (:mod:`AnomalyScoutLib.denoiser`)
  draws the pseudo-normal slice in one U-Net pass, and the slice's score is the denoiser's own (the top of
  its unsmoothed residual). It needs a model with a denoiser; the engine runs it
  (:class:`~AnomalyScoutLib.engine.VolumeScorer`), not the :class:`Reconstructor` below. Measured on held-out
  phantoms, the denoiser's residual finds anomalies as well as the generator's modes with their head and
  atlas, or better, at a fraction of the time (``docs/benchmarks.md``).

The generator's per-layer noise maps stay **frozen** (``noise_mode="const"``) in every mode: a projector that
also optimises noise can paint the anomaly back in. The refinement loss per slice is the body-masked pixel
loss (L1 or L2) + ``kappa`` x the squared discriminator-feature distance (+ optional SSIM loss). Losses are
summed over slices and Adam is element-wise, so each slice's result does not depend on its batch-mates:
batch size changes speed, not results.

The networks run in ``torch.channels_last`` memory format on CPU and CUDA: the same numbers (up to float
rounding, ~1e-5) at 1.4-1.6x the speed of the default layout on CPU, where oneDNN's convolutions, average
pooling and bilinear upsampling have NHWC kernels. Fast mode, which never needs gradients, runs under
``torch.inference_mode``, in bf16 where the hardware computes it natively (:mod:`AnomalyScoutLib.precision`).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from AnomalyScoutLib.cancellation import CancelFlag
from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.nets.discriminator import Discriminator
from AnomalyScoutLib.nets.encoder import Encoder
from AnomalyScoutLib.nets.generator import Generator
from AnomalyScoutLib.precision import bf16_autocast, native_bf16
from AnomalyScoutLib.scoring import feature_residual, gaussian_smooth

__all__ = [
    "DEFAULT_ACCURATE_LR",
    "DEFAULT_ACCURATE_STEPS",
    "DENOISE_MODE",
    "MODES",
    "InversionConfig",
    "Reconstruction",
    "Reconstructor",
    "ssim_map",
]

#: The mode in which the model's denoiser, not the generator, draws the pseudo-normal slice.
DENOISE_MODE = "denoise"
MODES: tuple[str, ...] = ("fast", "accurate", "projector", DENOISE_MODE)
#: Chosen on phantom cases with anomalies vs normal ones (benchmarks/speed.py --sweep, docs/speed.md).
DEFAULT_ACCURATE_STEPS = 20
DEFAULT_ACCURATE_LR = 0.02
PROJECTOR_STEPS = 1000
PROJECTOR_LR = 0.1
#: NVlabs projector schedule: latent noise decays to 0 over the first 75 % of steps, lr ramps up over 5 %
#: and down (cosine) over the last 25 %.
_NOISE_FACTOR, _NOISE_RAMP, _LR_RAMPUP, _LR_RAMPDOWN = 0.05, 0.75, 0.05, 0.25
_W_STD_SAMPLES = 512


@dataclass(frozen=True)
class InversionConfig:
    """How slices are reconstructed.

    Attributes:
        mode: ``"fast"``, ``"accurate"``, ``"projector"`` or ``"denoise"``.
        steps: optimisation steps (``None``: 20 for accurate, 1000 for projector; ignored by fast and
            denoise).
        lr: Adam learning rate (``None``: the mode's default).
        latent: ``"w+"`` (one w per layer) or ``"w"`` (one w for all layers); ``None``: w+ for accurate, w for
            the projector (as NVlabs).
        pixel_loss: ``"l1"`` or ``"l2"``, over the body mask.
        kappa: weight of the discriminator-feature distance in the refinement loss.
        ssim_weight: weight of ``1 - SSIM`` over the body (0: off).
        seed: seeds the projector's latent noise, so runs repeat exactly.
        amp: bfloat16 autocast on a CUDA device that computes it natively (and on such a CPU too when the
            :class:`Reconstructor` is told ``cpu_bf16``: :mod:`AnomalyScoutLib.precision`).
    """

    mode: str = "fast"
    steps: int | None = None
    lr: float | None = None
    latent: str | None = None
    pixel_loss: str = "l1"
    kappa: float = 0.05
    ssim_weight: float = 0.0
    seed: int = 0
    amp: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.steps is not None and self.steps < 0:
            raise ConfigError(f"steps must be >= 0, got {self.steps}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.latent not in (None, "w", "w+"):
            raise ConfigError(f"latent must be 'w' or 'w+', got {self.latent!r}")
        if self.pixel_loss not in ("l1", "l2"):
            raise ConfigError(f"pixel_loss must be 'l1' or 'l2', got {self.pixel_loss!r}")
        if self.kappa < 0 or self.ssim_weight < 0:
            raise ConfigError("kappa and ssim_weight must not be negative")

    @property
    def resolved_steps(self) -> int:
        if self.mode in ("fast", DENOISE_MODE):
            return 0
        default = DEFAULT_ACCURATE_STEPS if self.mode == "accurate" else PROJECTOR_STEPS
        return default if self.steps is None else self.steps

    @property
    def resolved_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return PROJECTOR_LR if self.mode == "projector" else DEFAULT_ACCURATE_LR

    @property
    def resolved_latent(self) -> str:
        if self.latent is not None:
            return self.latent
        return "w" if self.mode == "projector" else "w+"


@dataclass(frozen=True)
class Reconstruction:
    """Reconstructed slices ``(N, H, W)`` in [-1, 1] and their feature residuals ``(N,)`` (NaN where the
    reconstructor was told not to measure them)."""

    images: torch.Tensor
    feature_residual: torch.Tensor


def ssim_map(a: torch.Tensor, b: torch.Tensor, sigma_px: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM of ``(N, H, W)`` images in [-1, 1] (data range 2) with a Gaussian window.

    The images are shifted to [0, 2] first: SSIM's luminance term assumes non-negative intensities.
    """
    c1, c2 = (0.01 * 2.0) ** 2, (0.03 * 2.0) ** 2
    a, b = a + 1.0, b + 1.0
    mu_a, mu_b = gaussian_smooth(a, sigma_px), gaussian_smooth(b, sigma_px)
    var_a = gaussian_smooth(a * a, sigma_px) - mu_a**2
    var_b = gaussian_smooth(b * b, sigma_px) - mu_b**2
    cov = gaussian_smooth(a * b, sigma_px) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def _memory_format(device: torch.device) -> torch.memory_format:
    """``channels_last`` where it is known to be faster and exact (CPU, CUDA); the default layout elsewhere
    (MPS has had wrong results and missing kernels for channels-last tensors)."""
    return torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format


def _never() -> None:
    """The cancellation check when nobody can cancel."""


def _lr_factor(t: float) -> float:
    """NVlabs projector learning-rate schedule at progress ``t`` in [0, 1]."""
    ramp = min(1.0, (1.0 - t) / _LR_RAMPDOWN)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return ramp * min(1.0, t / _LR_RAMPUP)


class Reconstructor:
    """Reconstructs batches of normalised slices with a frozen generator, encoder and discriminator.

    Example:
        >>> reconstructor = Reconstructor(model.generator, model.encoder, model.discriminator,
        ...                               InversionConfig(mode="accurate"), torch.device("cpu"))
        >>> result = reconstructor.reconstruct(x, positions, body)
    """

    def __init__(
        self,
        generator: Generator,
        encoder: Encoder,
        discriminator: Discriminator,
        config: InversionConfig,
        device: torch.device,
        *,
        feature_residual: bool = True,
        cpu_bf16: bool = False,
    ) -> None:
        self.generator, self.encoder, self.discriminator = generator, encoder, discriminator
        self.config = config
        self.device = device
        #: Whether the networks run under bf16 autocast: ``config.amp`` on a device that computes bf16
        #: natively, on a CPU only when asked (``cpu_bf16``: the product's ``--precision auto``; training and
        #: the benchmark harness keep fp32 there, so that their caches and results stay comparable).
        self.bf16 = config.amp and native_bf16(device) and (device.type != "cpu" or cpu_bf16)
        #: Measure the discriminator-feature residual of every reconstruction. A model whose score is its
        #: anomaly-map head never reads it, and in ``fast`` mode its two discriminator passes are about half
        #: of the network time; off, ``fast`` mode runs no discriminator pass at all.
        self.feature_residual = feature_residual
        self._memory_format = _memory_format(device)
        for net in (generator, encoder, discriminator):
            # In place: the nets are converted once here instead of copied. Saving a model is unaffected
            # (AnomalyModel.state_tensors makes every tensor contiguous, so the file and its digest are too).
            net.eval().requires_grad_(False).to(memory_format=self._memory_format)
        self._w_std: float | None = None

    def _image_batch(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, H, W)`` slices as the ``(N, 1, H, W)`` network input in the nets' memory format."""
        return images[:, None].contiguous(memory_format=self._memory_format)

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """bf16 autocast when :attr:`bf16`, else nothing; the engine runs the head under it too."""
        return bf16_autocast(self.device, self.bf16)

    def _synthesize(self, ws: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.generator.synthesis(ws, noise_mode="const")[:, 0].float()

    def _features(self, images: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.discriminator.features(self._image_batch(images), position).float()

    def reconstruct(
        self, x: torch.Tensor, position: torch.Tensor, mask: torch.Tensor, cancel: CancelFlag | None = None
    ) -> Reconstruction:
        """Reconstruct ``(N, H, W)`` slices in [-1, 1] at ``position`` (N,) with body ``mask``.

        Raises:
            CancelledError: ``cancel`` was set (checked between network passes and optimisation steps).
        """
        if x.ndim != 3 or mask.shape != x.shape or position.shape != (x.shape[0],):
            raise ValueError(
                f"need x (N, H, W), mask like x, position (N,); got {tuple(x.shape)}, {tuple(mask.shape)}, "
                f"{tuple(position.shape)}"
            )
        check = cancel.raise_if_set if cancel is not None else _never
        refine = self.config.resolved_steps > 0
        # inference_mode skips autograd's bookkeeping entirely, but its tensors can never enter a graph, so
        # the refinement modes (whose loss uses target_features) stay with no_grad.
        with torch.no_grad() if refine else torch.inference_mode():
            target_features = self._features(x, position) if refine or self.feature_residual else None
            check()
            if self.config.mode == "projector":
                ws = self.generator.mean_w(position)[:, None].repeat(1, self.generator.num_ws, 1)
            else:
                with self.autocast():
                    ws = self.encoder(self._image_batch(x), position).float()
            if refine:
                ws = self._refine(ws, x, position, mask, target_features, cancel)
            check()
            images = self._synthesize(ws)
            check()
            if self.feature_residual:
                residual = feature_residual(target_features, self._features(images, position))
            else:
                residual = torch.full((len(images),), float("nan"), device=images.device)
        return Reconstruction(images=images, feature_residual=residual)

    def _latent_noise_std(self) -> float:
        """Spread of w under the mapping network (scales the projector's latent noise, as in NVlabs)."""
        if self._w_std is None:
            seeded = torch.Generator().manual_seed(self.config.seed)
            z = torch.randn(_W_STD_SAMPLES, self.generator.z_dim, generator=seeded).to(self.device)
            p = torch.rand(_W_STD_SAMPLES, generator=seeded).to(self.device)
            with torch.no_grad():
                w = self.generator.mapping(z, p)[:, 0]
            self._w_std = float(((w - w.mean(dim=0)) ** 2).sum(dim=1).mean().sqrt())
        return self._w_std

    def _loss(
        self,
        images: torch.Tensor,
        x: torch.Tensor,
        position: torch.Tensor,
        mask: torch.Tensor,
        target_features: torch.Tensor,
    ) -> torch.Tensor:
        """Sum over slices of each slice's own loss (keeps slices independent of their batch)."""
        weight = mask.float()
        area = weight.flatten(1).sum(dim=1).clamp_min(1.0)
        diff = images - x
        pixel = diff.abs() if self.config.pixel_loss == "l1" else diff**2
        loss = (pixel * weight).flatten(1).sum(dim=1) / area
        if self.config.kappa > 0:
            loss = loss + self.config.kappa * feature_residual(
                target_features, self._features(images, position)
            )
        if self.config.ssim_weight > 0:
            ssim = (ssim_map(images, x) * weight).flatten(1).sum(dim=1) / area
            loss = loss + self.config.ssim_weight * (1.0 - ssim)
        return loss.sum()

    def _refine(
        self,
        ws: torch.Tensor,
        x: torch.Tensor,
        position: torch.Tensor,
        mask: torch.Tensor,
        target_features: torch.Tensor,
        cancel: CancelFlag | None,
    ) -> torch.Tensor:
        config = self.config
        steps, base_lr = config.resolved_steps, config.resolved_lr
        single_w = config.resolved_latent == "w"
        latent = (ws.mean(dim=1, keepdim=True) if single_w else ws).detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([latent], lr=base_lr, betas=(0.9, 0.999))
        projector = config.mode == "projector"
        noise_std = self._latent_noise_std() if projector else 0.0
        seeded = torch.Generator(device=self.device).manual_seed(config.seed)
        with torch.enable_grad():
            for step in range(steps):
                if cancel is not None:
                    cancel.raise_if_set()
                t = step / steps
                for group in optimizer.param_groups:
                    group["lr"] = base_lr * (
                        _lr_factor(t) if projector else 0.5 + 0.5 * math.cos(math.pi * t)
                    )
                current = latent
                if projector:
                    scale = noise_std * _NOISE_FACTOR * max(0.0, 1.0 - t / _NOISE_RAMP) ** 2
                    noise = torch.randn(latent.shape, generator=seeded, device=self.device)
                    current = latent + noise * scale
                if single_w:
                    current = current.expand(-1, self.generator.num_ws, -1)
                loss = self._loss(self._synthesize(current), x, position, mask, target_features)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        final = latent.detach()
        return final.expand(-1, self.generator.num_ws, -1) if single_w else final
