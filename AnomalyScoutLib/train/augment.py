"""DiffAugment (Zhao et al. 2020): differentiable augmentations applied to real *and* generated images.

D only ever sees augmented images, so it cannot memorise a small training set, while G still learns the
un-augmented distribution because every augmentation is applied identically to both sides. No flips: a
mirrored abdomen (liver on the patient's left) is not normal anatomy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from AnomalyScoutLib.errors import ConfigError

__all__ = ["AUGMENTATIONS", "diff_augment", "parse_policy"]


def _brightness_contrast(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    shift = (torch.rand(n, 1, 1, 1, device=x.device) - 0.5) * 0.4
    scale = 0.7 + 0.6 * torch.rand(n, 1, 1, 1, device=x.device)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * scale + mean + shift


def _translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shifts by up to ``ratio`` of the size, filling with air (-1) rather than wrapping anatomy around."""
    n, _, h, w = x.shape
    max_dy, max_dx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-max_dy, max_dy + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(-max_dx, max_dx + 1, (n, 1, 1), device=x.device)
    rows = torch.arange(h, device=x.device)[None, :, None] - dy
    cols = torch.arange(w, device=x.device)[None, None, :] - dx
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    rows = (rows + 1).clamp(0, h + 1).expand(n, h, w)
    cols = (cols + 1).clamp(0, w + 1).expand(n, h, w)
    batch = torch.arange(n, device=x.device)[:, None, None].expand(n, h, w)
    return padded[batch, 0, rows, cols][:, None]


def _cutout(x: torch.Tensor, ratio: float = 0.25) -> torch.Tensor:
    """Sets a random square of side ``ratio`` of the image to 0 (mid-window grey) in every image."""
    n, _, h, w = x.shape
    size_y, size_x = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h - size_y + 1, (n, 1, 1), device=x.device)
    left = torch.randint(0, w - size_x + 1, (n, 1, 1), device=x.device)
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    inside = (rows >= top) & (rows < top + size_y) & (cols >= left) & (cols < left + size_x)
    return x * (~inside)[:, None].to(x.dtype)


#: The augmentations a policy string may name, applied in this order.
AUGMENTATIONS = {"color": _brightness_contrast, "translation": _translation, "cutout": _cutout}


def parse_policy(policy: str) -> tuple[str, ...]:
    """``"color,translation,cutout"`` -> names; ``""`` or ``"none"`` -> no augmentation."""
    names = tuple(name.strip() for name in policy.split(",") if name.strip() and name.strip() != "none")
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown:
        raise ConfigError(
            f"unknown augmentation(s) {unknown}; choose from {', '.join(AUGMENTATIONS)} or none"
        )
    return names


def diff_augment(x: torch.Tensor, policy: tuple[str, ...]) -> torch.Tensor:
    """Applies the named augmentations (fresh random parameters per image); differentiable in ``x``."""
    for name in policy:
        x = AUGMENTATIONS[name](x)
    return x
