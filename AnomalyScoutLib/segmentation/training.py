"""Training, prediction, uncertainty and features of the slice segmenter (:class:`~.unet.UNet`).

Everything works on stacks of pre-processed slices, ``images`` of shape (N, H, W) (float, e.g. HU window
mapped to [-1, 1]) and ``masks`` (N, H, W) of 0/1, so the same helpers serve the benchmark and the
active-learning baselines. Training counts optimiser *steps*, not epochs: an active-learning round then costs
the same however many labels it has, which keeps a CPU simulation predictable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "UncertaintyMethod",
    "dice_bce_loss",
    "predict_probabilities",
    "predictive_entropy",
    "segmentation_features",
    "train_segmenter",
]

UncertaintyMethod = Literal["mc_dropout", "tta"]


def _as_batch(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, H, W) array -> (N, 1, H, W) float tensor on ``device``."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"`images` must have shape (N, H, W), got {images.shape}")
    return torch.as_tensor(images, dtype=torch.float32, device=device).unsqueeze(1)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice, the usual pairing for small organs.

    BCE alone is dominated by background pixels on slices where the liver is small; the Dice term keeps the
    foreground's weight. ``eps`` smooths the Dice term so slices without liver do not divide by zero.
    """
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    intersection = (prob * target).sum(dim=(1, 2, 3))
    total = prob.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3))
    return bce + (1.0 - (2.0 * intersection + eps) / (total + eps)).mean()


def train_segmenter(
    model: nn.Module,
    images: np.ndarray,
    masks: np.ndarray,
    *,
    steps: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    optimiser: torch.optim.Optimizer | None = None,
) -> list[float]:
    """Train (or fine-tune, if ``model`` is already trained) on (slice, mask) pairs; returns each step's loss.

    Mini-batches are drawn with replacement by a generator seeded with ``seed``, so a run is reproducible and
    a tiny labelled set still gets ``steps`` updates. Fine-tuning round after round should pass the same
    ``optimiser`` each time (``lr`` is then ignored): a fresh Adam's first steps move every weight by about
    ``lr`` whatever its gradient, which can knock a trained model into predicting nothing.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"`steps` and `batch_size` must be positive, got {steps} and {batch_size}")
    masks = np.asarray(masks)
    if np.shape(images) != masks.shape:
        raise ValueError(f"`images` {np.shape(images)} and `masks` {masks.shape} must have the same shape")
    if len(masks) == 0:
        raise ValueError("cannot train on an empty set of slices")
    device = _device_of(model)
    x_all = _as_batch(images, device)
    y_all = _as_batch(masks.astype(np.float32), device)
    generator = torch.Generator().manual_seed(seed)
    if optimiser is None:
        optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        batch = torch.randint(len(x_all), (min(batch_size, len(x_all)),), generator=generator).to(device)
        loss = dice_bce_loss(model(x_all[batch]), y_all[batch])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


@torch.no_grad()
def _map_batches(
    model: nn.Module, images: np.ndarray, fn: Callable[[torch.Tensor], torch.Tensor], batch_size: int
) -> np.ndarray:
    """Apply ``fn`` to ``images`` in batches and concatenate the results as a numpy array."""
    x_all = _as_batch(images, _device_of(model))
    return torch.cat([fn(x_all[i : i + batch_size]).cpu() for i in range(0, len(x_all), batch_size)]).numpy()


def predict_probabilities(model: nn.Module, images: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """Foreground probability per pixel, (N, H, W), with dropout off."""
    model.eval()
    return _map_batches(model, images, lambda x: torch.sigmoid(model(x))[:, 0], batch_size)


def _enable_dropout_only(model: nn.Module) -> None:
    """Eval mode everywhere except dropout layers: MC-dropout samples dropout masks, nothing else."""
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.train()


#: Test-time augmentations and their inverses: identity and the three flips, all exactly invertible.
_TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


def _flipped_view(model: nn.Module, dims: tuple[int, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Probability map predicted on the flipped input, flipped back (an empty ``dims`` is the identity)."""
    return lambda x: torch.sigmoid(model(x.flip(dims))).flip(dims)


def predictive_entropy(
    model: nn.Module,
    images: np.ndarray,
    *,
    method: UncertaintyMethod = "mc_dropout",
    samples: int = 8,
    seed: int = 0,
    batch_size: int = 64,
) -> np.ndarray:
    """Mean per-pixel binary entropy of the averaged prediction, one value per slice, (N,).

    This is the "epistemic" strategy of MONAI Label: average the foreground probability over ``samples``
    dropout masks (``"mc_dropout"``) or over flips (``"tta"``, at most 4 distinct views), then take the
    entropy. Slices the model is unsure about score high.
    """
    if method not in ("mc_dropout", "tta"):
        raise ValueError(f"`method` must be 'mc_dropout' or 'tta', got {method!r}")
    if samples < 1:
        raise ValueError(f"`samples` must be positive, got {samples}")
    if method == "mc_dropout":
        torch.manual_seed(seed)
        _enable_dropout_only(model)
        views = [lambda x: torch.sigmoid(model(x))] * samples
    else:
        model.eval()
        views = [_flipped_view(model, dims) for dims in _TTA_FLIPS[:samples]]

    def entropy(x: torch.Tensor) -> torch.Tensor:
        p = torch.stack([view(x) for view in views]).mean(dim=0).clamp(1e-6, 1 - 1e-6)
        return (-(p * p.log() + (1 - p) * (1 - p).log())).mean(dim=(1, 2, 3))

    try:
        return _map_batches(model, images, entropy, batch_size)
    finally:
        model.eval()


def segmentation_features(model: nn.Module, images: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """Bottleneck embedding per slice, (N, C), for the coreset baseline (dropout off)."""
    model.eval()
    return _map_batches(model, images, model.features, batch_size)
