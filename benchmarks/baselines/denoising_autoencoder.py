"""Baseline (4): a denoising autoencoder trained with *coarse* noise (Kascenas et al., 2023).

Kascenas et al. ("The role of noise in denoising models for anomaly detection in medical images", MedIA 2023)
found that the noise a denoising model is trained to remove decides what it can find: fine pixel noise teaches
it to smooth, while noise drawn at 16×16 and upsampled to the image (σ = 0.2 of the intensity range) makes
blob-sized departures from normal anatomy the thing it learns to undo. Here the network and the training loop
are the plain autoencoder's (:mod:`benchmarks.baselines.autoencoder`), only the training input is corrupted,
so the two rows differ in the noise alone (the noise is the product's, ``AnomalyScoutLib.denoiser``). Their
model was a U-Net; this baseline keeps the autoencoder's narrow bottleneck, which copies less of the slice
through and finds less: the product's denoiser is their U-Net (``benchmarks.denoiser_track``).
"""

from __future__ import annotations

import torch

from AnomalyScoutLib.denoiser import coarse_noise
from benchmarks.baselines.autoencoder import AutoencoderDetector

__all__ = ["DenoisingAutoencoderDetector"]


class DenoisingAutoencoderDetector(AutoencoderDetector):
    """The autoencoder baseline trained to remove coarse noise; detection is unchanged (|x − AE(x)|)."""

    name = "denoising autoencoder"

    def __init__(self, *args, coarse: int = 16, sigma: float = 0.4, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.coarse = coarse
        self.sigma = sigma

    def training_input(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return batch + coarse_noise(tuple(batch.shape), generator, self.coarse, self.sigma)
