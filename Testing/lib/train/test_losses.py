"""The training losses against their closed forms on cases simple enough to compute by hand."""

from __future__ import annotations

import math

import torch

from AnomalyScoutLib.train.losses import (
    d_logistic_loss,
    encoder_loss,
    g_nonsaturating_loss,
    path_length_penalty,
    r1_penalty,
)


def test_logistic_losses_match_their_formulas_and_reward_the_right_side():
    zero = torch.zeros(4)
    assert math.isclose(d_logistic_loss(zero, zero).item(), 2 * math.log(2), rel_tol=1e-6)
    assert math.isclose(g_nonsaturating_loss(zero).item(), math.log(2), rel_tol=1e-6)
    confident = d_logistic_loss(torch.full((4,), 5.0), torch.full((4,), -5.0))
    fooled = d_logistic_loss(torch.full((4,), -5.0), torch.full((4,), 5.0))
    assert confident < 0.05 < 9.0 < fooled
    assert g_nonsaturating_loss(torch.full((4,), 5.0)) < g_nonsaturating_loss(torch.full((4,), -5.0))


def test_r1_of_a_linear_discriminator_is_the_squared_norm_of_its_weights():
    weight = torch.randn(1, 1, 4, 4)
    images = torch.randn(3, 1, 4, 4, requires_grad=True)
    logits = (images * weight).sum(dim=(1, 2, 3))
    assert torch.allclose(r1_penalty(logits, images), weight.square().sum())


def test_path_length_penalty_scales_with_the_generator_and_tracks_the_mean_length():
    ws = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    mixing = torch.randn(6, 64, generator=torch.Generator().manual_seed(1))

    def penalty_of(scale: float):
        images = (scale * ws.reshape(4, 6) @ mixing).reshape(4, 1, 8, 8)
        torch.manual_seed(2)  # the same random projection for both scales
        return path_length_penalty(images, ws, torch.tensor(0.0), decay=1.0)

    penalty, mean = penalty_of(1.0)
    penalty_doubled, mean_doubled = penalty_of(2.0)
    assert penalty.item() > 0 and torch.isclose(mean_doubled, 2 * mean)
    assert torch.isclose(penalty_doubled, 4 * penalty)


def test_encoder_loss_weights_its_terms():
    x, recon = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    features, recon_features = torch.zeros(2, 5), torch.full((2, 5), 2.0)
    ws, mean = torch.ones(2, 3, 4), torch.zeros(2, 4)
    terms = encoder_loss(x, recon, features, recon_features, ws, mean, kappa=0.5, latent_weight=0.1)
    assert terms["pixel"].item() == 1.0 and terms["feature"].item() == 4.0 and terms["latent"].item() == 1.0
    assert math.isclose(terms["total"].item(), 1.0 + 0.5 * 4.0 + 0.1 * 1.0, rel_tol=1e-6)
