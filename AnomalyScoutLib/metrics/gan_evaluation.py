"""Quality of a position-conditioned generator against real slices, overall and per slice-position bin.

One generated slice is drawn *at the position of every real slice*, so both sets have the same distribution of
positions: a generator that is good at the abdomen but poor at the pelvis cannot hide behind a position mix
that differs from the real one, and the per-bin figures show where it is weak. Every figure is computed on the
same pairs of sets (see :mod:`AnomalyScoutLib.metrics.gan_quality` for the definitions):

- ``fid``: Fréchet distance of InceptionV3 pool features (needs the ``fid`` extra; ``None`` without it).
- ``fd_encoder``: Fréchet distance of the project's encoder output, averaged over the W+ rows: CT-specific
  features that the model itself relies on.
- ``fd_discriminator``: Fréchet distance of the discriminator trunk's features.
- ``wasserstein_hu``: Wasserstein-1 distance of all pixel values in HU (within the model's HU window).
- ``kl_divergence``: KL(real ‖ generated) of the HU histograms.
- ``mutual_information``: MI of pixels at the same grid location of a real slice and the slice generated at
  its position; ``mutual_information_unpaired`` pairs the same slices at random instead, the value to expect
  if the position did not steer the anatomy. The gap between the two measures the conditioning.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from AnomalyScoutLib.errors import MetricError
from AnomalyScoutLib.metrics.gan_quality import (
    frechet_distance,
    kl_divergence,
    mutual_information,
    wasserstein_1d,
)
from AnomalyScoutLib.metrics.inception import InceptionFeatures
from AnomalyScoutLib.preprocessing import HUWindow

__all__ = ["GanEvaluation", "GenerativeModel", "QualityFigures", "evaluate_gan", "generate_at_positions"]

#: Histogram bins over the HU window for KL (5 HU wide over the default 600 HU window).
KL_BINS = 120
#: Bins per axis of the joint histogram for MI (coarser: a 2-D histogram needs many more samples per bin).
MI_BINS = 32


class GenerativeModel(Protocol):
    """The parts of :class:`AnomalyScoutLib.model_file.AnomalyModel` that the evaluation uses."""

    generator: nn.Module
    encoder: nn.Module
    discriminator: nn.Module
    window: HUWindow


@dataclass(frozen=True)
class QualityFigures:
    """All figures for one set of real slices and the slices generated at their positions."""

    n: int
    fid: float | None
    fd_encoder: float | None
    fd_discriminator: float | None
    wasserstein_hu: float
    kl_divergence: float
    mutual_information: float
    mutual_information_unpaired: float


@dataclass(frozen=True)
class GanEvaluation:
    """Figures over all slices and per position bin ``[low, high)`` (the last bin includes 1)."""

    overall: QualityFigures
    bins: tuple[tuple[float, float, QualityFigures], ...]
    fid_note: str | None
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the settings every figure depends on travel with the numbers."""
        return {
            "overall": dataclasses.asdict(self.overall),
            "position_bins": [
                {"low": low, "high": high, **dataclasses.asdict(figures)} for low, high, figures in self.bins
            ],
            "fid_note": self.fid_note,
            "settings": {"seed": self.seed, "kl_bins": KL_BINS, "kl_pseudo_count": 1.0, "mi_bins": MI_BINS},
        }


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    return (slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size))


@torch.no_grad()
def generate_at_positions(
    generator: nn.Module,
    positions: torch.Tensor,
    *,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = False,
) -> torch.Tensor:
    """One random slice (N, 1, R, R) in [-1, 1] per position, reproducible from ``seed``.

    Per-layer noise is random as in training (the variety it adds is part of what is judged); the global torch
    random state is left as it was.
    """
    device = positions.device
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        z = torch.randn(len(positions), generator.z_dim, device=device)
        images = [
            generator.synthesis(generator.mapping(z[part], positions[part]), noise_mode="random").clamp(-1, 1)
            for part in tqdm(
                _batches(len(positions), batch_size),
                total=-(-len(positions) // batch_size),
                desc="generating",
                disable=not progress,
            )
        ]
    return torch.cat(images).float()


@torch.no_grad()
def _model_features(
    model: GenerativeModel,
    images: torch.Tensor,
    positions: torch.Tensor,
    inception: InceptionFeatures | None,
    batch_size: int,
    progress: bool,
    desc: str,
) -> dict[str, np.ndarray]:
    """Encoder (W+ rows averaged), discriminator and, when available, InceptionV3 features of ``images``."""
    parts: dict[str, list[np.ndarray]] = {"encoder": [], "discriminator": []}
    if inception is not None:
        parts["inception"] = []
    for part in tqdm(
        _batches(len(images), batch_size),
        total=-(-len(images) // batch_size),
        desc=desc,
        disable=not progress,
    ):
        x, p = images[part], positions[part]
        parts["encoder"].append(model.encoder(x, p).mean(dim=1).float().cpu().numpy())
        parts["discriminator"].append(model.discriminator.features(x, p).float().cpu().numpy())
        if inception is not None:  # in the same loop, so that the slowest network shows in the progress bar
            parts["inception"].append(inception(x))
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}


def _frechet_or_none(
    real: dict[str, np.ndarray], fake: dict[str, np.ndarray], name: str, rows: np.ndarray
) -> float | None:
    """The Fréchet distance of one feature kind on the selected rows, ``None`` where it is undefined."""
    if name not in real or rows.sum() < 2:
        return None
    return frechet_distance(real[name][rows], fake[name][rows])


def _figures(
    real_features: dict[str, np.ndarray],
    fake_features: dict[str, np.ndarray],
    real_hu: np.ndarray,
    fake_hu: np.ndarray,
    rows: np.ndarray,
    window: HUWindow,
    shuffle: np.random.Generator,
) -> QualityFigures:
    real_pixels, fake_pixels = real_hu[rows], fake_hu[rows]
    value_range = (window.low, window.high)
    unpaired = fake_pixels[shuffle.permutation(len(fake_pixels))]
    return QualityFigures(
        n=int(rows.sum()),
        fid=_frechet_or_none(real_features, fake_features, "inception", rows),
        fd_encoder=_frechet_or_none(real_features, fake_features, "encoder", rows),
        fd_discriminator=_frechet_or_none(real_features, fake_features, "discriminator", rows),
        wasserstein_hu=wasserstein_1d(real_pixels, fake_pixels),
        kl_divergence=kl_divergence(real_pixels, fake_pixels, value_range, bins=KL_BINS),
        mutual_information=mutual_information(real_pixels, fake_pixels, value_range, bins=MI_BINS),
        mutual_information_unpaired=mutual_information(real_pixels, unpaired, value_range, bins=MI_BINS),
    )


def evaluate_gan(
    model: GenerativeModel,
    real_images: torch.Tensor,
    positions: torch.Tensor,
    *,
    position_bins: int = 5,
    inception: InceptionFeatures | None = None,
    fid_note: str | None = None,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = False,
) -> GanEvaluation:
    """Generate at the positions of ``real_images`` (N, 1, R, R) in [-1, 1] and compute every figure.

    Args:
        model: the generator, encoder, discriminator and HU window of one model (networks in eval mode, on the
            device of ``real_images``).
        real_images: real slices on the model grid, normalised with ``model.window``.
        positions: (N,) relative slice positions of the real slices.
        position_bins: number of equal-width bins of [0, 1] for the per-position figures.
        inception: InceptionV3 features for FID; ``None`` leaves ``fid`` out (then say why in ``fid_note``).
        fid_note: why FID is missing, carried into the report.
        seed: seed of the generated samples and of the unpaired MI shuffle.
        batch_size: slices per forward pass.
        progress: show tqdm progress bars.
    """
    if real_images.ndim != 4 or real_images.shape[1] != 1:
        raise MetricError(f"real slices must be (N, 1, R, R), got shape {tuple(real_images.shape)}")
    if positions.shape != (len(real_images),):
        raise MetricError(f"positions must have shape ({len(real_images)},), got {tuple(positions.shape)}")
    if len(real_images) < 2:
        raise MetricError(f"evaluating a generator needs at least 2 real slices, got {len(real_images)}")
    if position_bins < 1:
        raise MetricError(f"`position_bins` must be at least 1, got {position_bins}")
    fake_images = generate_at_positions(
        model.generator, positions, seed=seed, batch_size=batch_size, progress=progress
    )
    real_features = _model_features(
        model, real_images, positions, inception, batch_size, progress, "features of real slices"
    )
    fake_features = _model_features(
        model, fake_images, positions, inception, batch_size, progress, "features of generated slices"
    )
    window = model.window
    real_hu = window.denormalize(real_images.clamp(-1, 1).flatten(1).cpu().numpy())
    fake_hu = window.denormalize(fake_images.flatten(1).cpu().numpy())
    position_values = positions.cpu().numpy()
    shuffle = np.random.default_rng(seed)
    everything = np.ones(len(position_values), dtype=bool)
    overall = _figures(real_features, fake_features, real_hu, fake_hu, everything, window, shuffle)
    edges = np.linspace(0.0, 1.0, position_bins + 1)
    bin_of_slice = np.clip(np.searchsorted(edges, position_values, side="right") - 1, 0, position_bins - 1)
    per_bin = tuple(
        (
            float(edges[b]),
            float(edges[b + 1]),
            _figures(real_features, fake_features, real_hu, fake_hu, bin_of_slice == b, window, shuffle),
        )
        for b in range(position_bins)
        if np.any(bin_of_slice == b)
    )
    return GanEvaluation(overall, per_bin, fid_note, seed)
