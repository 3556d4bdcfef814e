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

Optionally the same figures are computed between the real slices and *other real slices* at the same
positions (from other volumes, see :func:`matched_reference`): what a perfect generator would score with the
same numbers of slices. Fréchet distances of a few hundred samples are far from 0 even for two real sets, so
this floor is what makes the generated figures readable.
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

__all__ = [
    "Comparison",
    "GanEvaluation",
    "GenerativeModel",
    "QualityFigures",
    "evaluate_gan",
    "generate_at_positions",
    "matched_reference",
]

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
    """All figures for one set of real slices and a second set of slices at the same positions."""

    n: int
    fid: float | None
    fd_encoder: float | None
    fd_discriminator: float | None
    wasserstein_hu: float
    kl_divergence: float
    mutual_information: float
    mutual_information_unpaired: float


@dataclass(frozen=True)
class Comparison:
    """Figures of the real slices against one other set: over all slices and per position bin.

    ``bins`` holds ``(low, high, figures)`` for every non-empty bin ``[low, high)`` (the last includes 1).
    """

    overall: QualityFigures
    bins: tuple[tuple[float, float, QualityFigures], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "overall": dataclasses.asdict(self.overall),
            "position_bins": [
                {"low": low, "high": high, **dataclasses.asdict(figures)} for low, high, figures in self.bins
            ],
        }


@dataclass(frozen=True)
class GanEvaluation:
    """Real vs generated slices, and optionally real vs other real slices at the same positions."""

    generated: Comparison
    reference: Comparison | None
    fid_note: str | None
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the settings every figure depends on travel with the numbers."""
        return {
            **self.generated.to_dict(),
            "reference": None if self.reference is None else self.reference.to_dict(),
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
    other_features: dict[str, np.ndarray],
    real_hu: np.ndarray,
    other_hu: np.ndarray,
    rows: np.ndarray,
    window: HUWindow,
    shuffle: np.random.Generator,
) -> QualityFigures:
    real_pixels, other_pixels = real_hu[rows], other_hu[rows]
    value_range = (window.low, window.high)
    unpaired = other_pixels[shuffle.permutation(len(other_pixels))]
    return QualityFigures(
        n=int(rows.sum()),
        fid=_frechet_or_none(real_features, other_features, "inception", rows),
        fd_encoder=_frechet_or_none(real_features, other_features, "encoder", rows),
        fd_discriminator=_frechet_or_none(real_features, other_features, "discriminator", rows),
        wasserstein_hu=wasserstein_1d(real_pixels, other_pixels),
        kl_divergence=kl_divergence(real_pixels, other_pixels, value_range, bins=KL_BINS),
        mutual_information=mutual_information(real_pixels, other_pixels, value_range, bins=MI_BINS),
        mutual_information_unpaired=mutual_information(real_pixels, unpaired, value_range, bins=MI_BINS),
    )


def matched_reference(
    positions: np.ndarray, volume_ids: np.ndarray, chosen: np.ndarray, rng: np.random.Generator
) -> np.ndarray | None:
    """For each chosen slice, the index of a slice of another volume at the nearest position.

    The other volume is drawn at random among all others, so the reference mixes anatomy as the real set
    does. ``None`` when there is only one volume (there is no other real slice to compare with).
    """
    positions, volume_ids = np.asarray(positions), np.asarray(volume_ids)
    volumes = np.unique(volume_ids)
    if volumes.size < 2:
        return None
    members = {v: np.flatnonzero(volume_ids == v) for v in volumes}
    sorted_members = {v: index[np.argsort(positions[index])] for v, index in members.items()}
    reference = np.empty(len(chosen), dtype=np.int64)
    for i, slice_index in enumerate(chosen):
        others = volumes[volumes != volume_ids[slice_index]]
        index = sorted_members[others[rng.integers(others.size)]]
        after = int(np.searchsorted(positions[index], positions[slice_index]))
        neighbours = index[[max(after - 1, 0), min(after, len(index) - 1)]]
        reference[i] = neighbours[np.argmin(np.abs(positions[neighbours] - positions[slice_index]))]
    return reference


def evaluate_gan(
    model: GenerativeModel,
    real_images: torch.Tensor,
    positions: torch.Tensor,
    *,
    reference_images: torch.Tensor | None = None,
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
        reference_images: optional other real slices (N, 1, R, R), one per real slice at (nearly) its position
            (:func:`matched_reference`); gives the real-vs-real floor of every figure.
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
    if reference_images is not None and reference_images.shape != real_images.shape:
        raise MetricError(
            f"reference slices must match the real ones' shape {tuple(real_images.shape)}, "
            f"got {tuple(reference_images.shape)}"
        )
    if len(real_images) < 2:
        raise MetricError(f"evaluating a generator needs at least 2 real slices, got {len(real_images)}")
    if position_bins < 1:
        raise MetricError(f"`position_bins` must be at least 1, got {position_bins}")
    others = {
        "generated": generate_at_positions(
            model.generator, positions, seed=seed, batch_size=batch_size, progress=progress
        )
    }
    if reference_images is not None:
        others["reference"] = reference_images.clamp(-1, 1)
    real_features = _model_features(
        model, real_images, positions, inception, batch_size, progress, "features of real slices"
    )
    window = model.window
    real_hu = window.denormalize(real_images.clamp(-1, 1).flatten(1).cpu().numpy())
    position_values = positions.cpu().numpy()
    edges = np.linspace(0.0, 1.0, position_bins + 1)
    bin_of_slice = np.clip(np.searchsorted(edges, position_values, side="right") - 1, 0, position_bins - 1)
    selections = [(0.0, 1.0, np.ones(len(position_values), dtype=bool))]
    selections += [
        (float(edges[b]), float(edges[b + 1]), bin_of_slice == b)
        for b in range(position_bins)
        if np.any(bin_of_slice == b)
    ]
    comparisons = {}
    for name, images in others.items():
        features = _model_features(
            model, images, positions, inception, batch_size, progress, f"features of {name} slices"
        )
        other_hu = window.denormalize(images.flatten(1).cpu().numpy())
        shuffle = np.random.default_rng(seed)
        figures = [
            (low, high, _figures(real_features, features, real_hu, other_hu, rows, window, shuffle))
            for low, high, rows in selections
        ]
        comparisons[name] = Comparison(figures[0][2], tuple(figures[1:]))
    return GanEvaluation(comparisons["generated"], comparisons.get("reference"), fid_note, seed)
