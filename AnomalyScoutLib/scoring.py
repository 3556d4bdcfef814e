"""From an image and its pseudo-normal reconstruction to residual maps, slice scores and a case score.

Everything here is a pure function of tensors at model resolution, so it is tested without a network.
Intensities are normalised HU (the model's window mapped to [-1, 1]); residuals therefore live in [0, 2].

* **Residual map**: ``|x - G(w)|``, Gaussian-smoothed (single noisy pixels are not anomalies) and set to 0
  outside the body (or organ) mask, so air and the table never count.
* **Slice score** = pixel score + ``kappa`` x discriminator-feature residual (the f-AnoGAN score, Schlegl et
  al.). The pixel score is, by default, the mean of the top ``top_fraction`` of in-mask residuals: a small
  lesion moves it while a plain mean over the whole body would drown it. ``method="wasserstein"`` instead
  compares the intensity distributions of image and reconstruction in square patches (1-D Wasserstein
  distance; Woodland et al. found it beats MSE on CT) and takes the same top-fraction mean over the patches
  inside the body.
* **Case score**: the mean of the ``case_top`` highest slice scores. A maximum would let one noisy slice
  decide; a mean over all slices would hide a lesion that spans a few.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from AnomalyScoutLib.errors import ConfigError

__all__ = [
    "SCORE_METHODS",
    "ScoreConfig",
    "SliceScores",
    "case_score",
    "feature_residual",
    "gaussian_smooth",
    "patch_wasserstein",
    "residual_maps",
    "score_slices",
    "top_fraction_mean",
]

SCORE_METHODS: tuple[str, ...] = ("topk", "wasserstein")


@dataclass(frozen=True)
class ScoreConfig:
    """How slice and case scores are computed; a calibration is only valid for the same config.

    Attributes:
        method: ``"topk"`` (highest residuals) or ``"wasserstein"`` (patch-wise distributions).
        top_fraction: fraction of in-mask pixels (or patches) averaged into the slice score.
        smoothing_px: Gaussian sigma of the residual smoothing, in model pixels (0 disables it).
        kappa: weight of the discriminator-feature residual in the slice score.
        patch_px: patch side for ``"wasserstein"`` (0: resolution / 16: 32 px at 512, Woodland et al.).
        case_top: how many of the highest slice scores are averaged into the case score.
    """

    method: str = "topk"
    top_fraction: float = 0.05
    smoothing_px: float = 1.0
    kappa: float = 1.0
    patch_px: int = 0
    case_top: int = 3

    def __post_init__(self) -> None:
        if self.method not in SCORE_METHODS:
            raise ConfigError(f"score method {self.method!r} is not one of {', '.join(SCORE_METHODS)}")
        if not 0.0 < self.top_fraction <= 1.0:
            raise ConfigError(f"top_fraction must be in (0, 1], got {self.top_fraction}")
        if self.smoothing_px < 0 or self.kappa < 0:
            raise ConfigError("smoothing_px and kappa must not be negative")
        if self.patch_px < 0 or self.case_top < 1:
            raise ConfigError("patch_px must be >= 0 and case_top >= 1")

    def key(self) -> str:
        """A short name for the score definition, used to file calibrations (e.g. ``"topk"``)."""
        return self.method

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "method": self.method,
            "top_fraction": self.top_fraction,
            "smoothing_px": self.smoothing_px,
            "kappa": self.kappa,
            "patch_px": self.patch_px,
            "case_top": self.case_top,
        }


@dataclass(frozen=True)
class SliceScores:
    """Scores of a batch of slices (each shape ``(N,)``): the combined ``score`` and its two parts."""

    score: torch.Tensor
    pixel: torch.Tensor
    feature: torch.Tensor


def gaussian_smooth(maps: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, H, W)`` maps with reflected borders (no dark rim at the edge)."""
    if sigma_px <= 0:
        return maps
    # Three sigmas, but never past the far edge: reflection cannot pad by more than the map's size - 1
    # (a wide blur of a small map, as the anomaly-map synthesis asks of a 16 px test model).
    radius = max(1, min(int(math.ceil(3.0 * sigma_px)), min(maps.shape[-2:]) - 1))
    offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma_px) ** 2)
    kernel = kernel / kernel.sum()
    x = maps.unsqueeze(1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return x.squeeze(1)


def residual_maps(
    image: torch.Tensor, reconstruction: torch.Tensor, mask: torch.Tensor, sigma_px: float
) -> torch.Tensor:
    """Smoothed ``|image - reconstruction|`` of ``(N, H, W)`` images, 0 outside the boolean ``mask``."""
    if image.shape != reconstruction.shape or image.shape != mask.shape:
        raise ValueError(
            f"image {tuple(image.shape)}, reconstruction {tuple(reconstruction.shape)} and mask "
            f"{tuple(mask.shape)} must have the same (N, H, W) shape"
        )
    return gaussian_smooth((image - reconstruction).abs(), sigma_px) * mask


def top_fraction_mean(values: torch.Tensor, valid: torch.Tensor, fraction: float) -> torch.Tensor:
    """Per row of ``(N, M)`` values: mean of the highest ``fraction`` of its ``valid`` entries (at least 1).

    Rows without a valid entry (a slice outside the body) score 0.
    """
    values = values.flatten(1).float()
    valid = valid.flatten(1)
    counts = valid.sum(dim=1)
    k = torch.clamp(torch.ceil(counts.float() * fraction).long(), min=1)
    # Only the largest k of a row are summed: a partial selection, not a sort of every pixel (a tenth of the
    # time at 1 % of 128²); topk returns them in descending order, as the sort did.
    k_max = int(k.max()) if len(k) else 1
    ranked = values.masked_fill(~valid, float("-inf")).topk(min(k_max, values.shape[1]), dim=1).values
    sums = ranked.cumsum(dim=1).gather(1, (k - 1).unsqueeze(1)).squeeze(1)
    return torch.where(counts > 0, sums / k.float(), torch.zeros_like(sums))


def _patches(images: torch.Tensor, size: int) -> torch.Tensor:
    """Non-overlapping ``size``x``size`` patches of ``(N, H, W)`` as ``(N, P, size*size)``."""
    return F.unfold(images.unsqueeze(1), kernel_size=size, stride=size).transpose(1, 2)


def patch_wasserstein(
    image: torch.Tensor, reconstruction: torch.Tensor, mask: torch.Tensor, patch_px: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D Wasserstein distance between the intensity distributions of image and reconstruction, per patch.

    Two empirical distributions of equally many samples are at W1 = mean |sorted(a) - sorted(b)|. Returns the
    ``(N, P)`` distances and a ``(N, P)`` flag for patches at least half inside the mask (only those count).
    """
    if patch_px < 2 or patch_px > min(image.shape[-2:]):
        raise ConfigError(f"patch size {patch_px} px does not fit images of {tuple(image.shape[-2:])} px")
    a = _patches(image.float(), patch_px).sort(dim=2).values
    b = _patches(reconstruction.float(), patch_px).sort(dim=2).values
    inside = _patches(mask.float(), patch_px).mean(dim=2) >= 0.5
    return (a - b).abs().mean(dim=2), inside


def feature_residual(features_image: torch.Tensor, features_reconstruction: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of discriminator features, per slice (the f-AnoGAN feature term)."""
    return (features_image.float() - features_reconstruction.float()).pow(2).flatten(1).mean(dim=1)


def score_slices(
    image: torch.Tensor,
    reconstruction: torch.Tensor,
    mask: torch.Tensor,
    residual: torch.Tensor,
    feature: torch.Tensor,
    config: ScoreConfig,
) -> SliceScores:
    """Slice scores of a batch from images, reconstructions, masks, residuals and feature residuals."""
    if config.method == "topk":
        pixel = top_fraction_mean(residual, mask, config.top_fraction)
    else:
        patch = config.patch_px or max(4, image.shape[-1] // 16)
        distances, inside = patch_wasserstein(image, reconstruction, mask, patch)
        pixel = top_fraction_mean(distances, inside, config.top_fraction)
    feature = feature.float()
    return SliceScores(score=pixel + config.kappa * feature, pixel=pixel, feature=feature)


def case_score(slice_scores: np.ndarray, config: ScoreConfig) -> float:
    """The case score: mean of the ``config.case_top`` highest finite slice scores (NaN for no slices)."""
    scores = np.asarray(slice_scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        return float("nan")
    top = np.sort(scores)[::-1][: config.case_top]
    return float(top.mean())
