"""The training losses as small pure functions (each testable alone).

Logits are raw discriminator outputs; images are (N, 1, res, res). Nothing here touches optimisers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "d_logistic_loss",
    "encoder_loss",
    "g_nonsaturating_loss",
    "path_length_penalty",
    "r1_penalty",
]


def d_logistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator's logistic loss: -log sigmoid(real) - log(1 - sigmoid(fake))."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_nonsaturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator's non-saturating loss -log sigmoid(fake): strong gradients while D still wins easily."""
    return F.softplus(-fake_logits).mean()


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """R1: mean over the batch of ||d logit / d image||^2 on real data (``real_images`` must require grad).

    It keeps D flat around the data, which is what makes non-saturating GAN training converge; the caller
    multiplies by gamma / 2 and, for lazy regularisation, by the interval.
    """
    (gradient,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return gradient.square().sum(dim=(1, 2, 3)).mean()


def path_length_penalty(
    images: torch.Tensor, ws: torch.Tensor, mean_path_length: torch.Tensor, decay: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor]:
    """StyleGAN2's path-length regulariser: keeps ||J_w^T y|| constant so w steps are uniform in image space.

    Args:
        images: generator output for ``ws`` (``ws`` must require grad).
        ws: the latents, (N, num_ws, w_dim).
        mean_path_length: running mean of the path lengths (a 0-d tensor).
        decay: update rate of the running mean.

    Returns:
        The penalty and the updated running mean (detached).
    """
    noise = torch.randn_like(images) / (images.shape[2] * images.shape[3]) ** 0.5
    (gradient,) = torch.autograd.grad((images * noise).sum(), ws, create_graph=True)
    lengths = gradient.square().sum(dim=2).mean(dim=1).sqrt()
    updated = mean_path_length + decay * (lengths.mean().detach() - mean_path_length)
    return (lengths - updated).square().mean(), updated


def encoder_loss(
    images: torch.Tensor,
    reconstructions: torch.Tensor,
    image_features: torch.Tensor,
    reconstruction_features: torch.Tensor,
    ws: torch.Tensor,
    mean_ws: torch.Tensor,
    *,
    kappa: float,
    latent_weight: float,
) -> dict[str, torch.Tensor]:
    """f-AnoGAN's izi_f loss plus a latent regulariser; returns the terms and their weighted ``"total"``.

    ``MSE(x, G(E(x))) + kappa * MSE(f_D(x), f_D(G(E(x)))) + latent_weight * mean ||ws - mean_w(p)||^2``: the
    last term keeps codes where the generator was trained, so that an anomaly cannot be reproduced by an
    out-of-distribution code.
    """
    pixel = F.mse_loss(reconstructions, images)
    feature = F.mse_loss(reconstruction_features, image_features)
    latent = (ws - mean_ws[:, None]).square().mean()
    return {
        "pixel": pixel,
        "feature": feature,
        "latent": latent,
        "total": pixel + kappa * feature + latent_weight * latent,
    }
