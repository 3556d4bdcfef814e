"""Baseline (3): a small convolutional autoencoder; the anomaly map is its reconstruction residual.

The classic reconstruction baseline (and the backbone of many MOOD entries): if a learned,
position-conditioned generator is worth its complexity, it must beat an autoencoder trained on the same
normal slices for a few CPU minutes. The bottleneck (8×8×``latent_channels`` at 128²) is narrow enough
that a lesion is not copied through.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from benchmarks.aggregation import slice_scores
from benchmarks.detectors import Detection
from benchmarks.slices import SliceSet

__all__ = ["ConvAutoencoder", "AutoencoderDetector"]


def _down(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)
    )


def _up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()
    )


class ConvAutoencoder(nn.Module):
    """Four stride-2 stages down and up; input and output in [-1, 1] (tanh), side a multiple of 16."""

    def __init__(self, width: int = 16, latent_channels: int = 16):
        super().__init__()
        w = width
        self.encoder = nn.Sequential(
            _down(1, w),
            _down(w, 2 * w),
            _down(2 * w, 4 * w),
            _down(4 * w, 8 * w),
            nn.Conv2d(8 * w, latent_channels, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, 8 * w, 1),
            nn.ReLU(),
            _up(8 * w, 4 * w),
            _up(4 * w, 2 * w),
            _up(2 * w, w),
            nn.ConvTranspose2d(w, 1, 4, stride=2, padding=1),
            nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1 or x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(f"expected (N, 1, H, W) with H, W multiples of 16, got {tuple(x.shape)}")
        return self.decoder(self.encoder(x))


class AutoencoderDetector:
    """Trains :class:`ConvAutoencoder` on the normal training slices; map = |x − AE(x)| inside the body.

    Args:
        steps: Optimiser steps (batch ``batch_size``, Adam at ``lr``); under two CPU minutes at 128².
        seed: Seeds the initialisation and the batch order, so that the baseline is reproducible.
    """

    name = "autoencoder"

    def __init__(
        self, steps: int = 400, batch_size: int = 16, lr: float = 1e-3, seed: int = 0, width: int = 16
    ):
        if steps < 1 or batch_size < 1:
            raise ValueError("steps and batch_size must be at least 1")
        self.steps = steps
        self.batch_size = batch_size
        self.lr = lr
        self.seed = seed
        self.width = width
        self.model: ConvAutoencoder | None = None
        self.losses: list[float] = []

    def fit(self, train: SliceSet) -> None:
        """Plain MSE training, with ±4 px shifts since a few volumes make few distinct slices."""
        if len(train) == 0:
            raise ValueError("the autoencoder needs at least one training slice")
        generator = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        model = ConvAutoencoder(self.width)
        optimiser = torch.optim.Adam(model.parameters(), lr=self.lr)
        images = torch.from_numpy(train.images).unsqueeze(1)
        model.train()
        self.losses = []
        for _ in range(self.steps):
            batch = images[torch.randint(len(images), (self.batch_size,), generator=generator)]
            dy, dx = torch.randint(-4, 5, (2,), generator=generator).tolist()
            batch = torch.roll(batch, shifts=(dy, dx), dims=(2, 3))
            loss = nn.functional.mse_loss(model(self.training_input(batch, generator)), batch)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            self.losses.append(loss.item())
        self.model = model.eval()

    def training_input(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """What the network sees while learning to output ``batch``: the clean slices (the denoising variant
        corrupts them, :mod:`benchmarks.baselines.denoising_autoencoder`)."""
        return batch

    @torch.no_grad()
    def reconstruct(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """AE(x) for ``(n, h, w)`` images in [-1, 1]."""
        if self.model is None:
            raise RuntimeError("fit the autoencoder before reconstruct")
        out = [
            self.model(torch.from_numpy(images[i : i + batch_size]).unsqueeze(1)).squeeze(1).numpy()
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros_like(images)

    def detect(self, slices: SliceSet) -> Detection:
        """|x − AE(x)| in normalised units (1 = half the HU window), 0 outside the body."""
        residual = np.abs(slices.images - self.reconstruct(slices.images))
        maps = np.where(slices.body, residual, 0.0).astype(np.float32)
        return Detection(maps=maps, slice_scores=slice_scores(maps, slices.body))
