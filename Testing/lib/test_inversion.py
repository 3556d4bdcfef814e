"""Reconstruction modes on tiny random-initialised networks (the trained model is not needed here)."""

from __future__ import annotations

import copy

import pytest
import torch

from AnomalyScoutLib import inversion
from AnomalyScoutLib.cancellation import CancelFlag
from AnomalyScoutLib.errors import CancelledError, ConfigError
from AnomalyScoutLib.inversion import InversionConfig, Reconstructor, ssim_map
from AnomalyScoutLib.nets.architecture import ArchitectureConfig
from AnomalyScoutLib.nets.discriminator import Discriminator
from AnomalyScoutLib.nets.encoder import Encoder
from AnomalyScoutLib.nets.generator import Generator

torch.set_num_threads(1)
TINY = ArchitectureConfig(16, (16, 16, 8), z_dim=16, w_dim=16, mapping_layers=2, position_frequencies=2)


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    generator, encoder, discriminator = Generator(TINY), Encoder(TINY), Discriminator(TINY)
    encoder.anchor_to(generator)
    return generator, encoder, discriminator


@pytest.fixture(scope="module")
def batch(nets):
    """Three generator samples (so a perfect reconstruction exists) and a full body mask."""
    generator = nets[0]
    position = torch.tensor([0.2, 0.5, 0.8])
    with torch.no_grad():
        x = generator(
            torch.randn(3, TINY.z_dim, generator=torch.Generator().manual_seed(1)),
            position,
            noise_mode="const",
        )[:, 0]
    return x, position, torch.ones_like(x, dtype=torch.bool)


def _reconstructor(nets, **kwargs) -> Reconstructor:
    return Reconstructor(*nets, InversionConfig(**kwargs), torch.device("cpu"))


def _l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().flatten(1).mean(dim=1)


def test_fast_mode_gives_one_image_and_feature_residual_per_slice(nets, batch):
    x, position, mask = batch
    result = _reconstructor(nets, mode="fast").reconstruct(x, position, mask)
    assert result.images.shape == x.shape and result.feature_residual.shape == (3,)
    assert torch.isfinite(result.images).all() and (result.feature_residual >= 0).all()


def test_without_the_feature_residual_fast_mode_runs_no_discriminator_and_draws_the_same(nets, batch):
    x, position, mask = batch
    generator, encoder, discriminator = nets
    calls = []
    hook = discriminator.trunk.register_forward_hook(lambda *_: calls.append(1))
    try:
        with_features = _reconstructor(nets, mode="fast").reconstruct(x, position, mask)
        measured = len(calls)
        without = Reconstructor(
            generator,
            encoder,
            discriminator,
            InversionConfig(mode="fast"),
            torch.device("cpu"),
            feature_residual=False,
        ).reconstruct(x, position, mask)
    finally:
        hook.remove()
    assert measured > 0 and len(calls) == measured  # no discriminator pass once told not to measure
    torch.testing.assert_close(without.images, with_features.images)
    assert torch.isnan(without.feature_residual).all() and without.feature_residual.shape == (3,)


def test_refinement_still_uses_the_features_when_the_residual_is_not_measured(nets, batch):
    x, position, mask = batch
    config = InversionConfig(mode="accurate", steps=5, lr=0.05)
    measured = _reconstructor(nets, mode="accurate", steps=5, lr=0.05).reconstruct(x, position, mask)
    unmeasured = Reconstructor(*nets, config, torch.device("cpu"), feature_residual=False)
    torch.testing.assert_close(unmeasured.reconstruct(x, position, mask).images, measured.images)


def test_refinement_brings_the_reconstruction_closer_than_the_encoder_alone(nets, batch):
    x, position, mask = batch
    fast = _reconstructor(nets, mode="fast").reconstruct(x, position, mask)
    accurate = _reconstructor(nets, mode="accurate", steps=30, lr=0.05).reconstruct(x, position, mask)
    assert (_l1(accurate.images, x) < _l1(fast.images, x)).all()


def test_a_slice_reconstructs_the_same_alone_or_in_a_batch(nets, batch):
    x, position, mask = batch
    reconstructor = _reconstructor(nets, mode="accurate", steps=5, ssim_weight=0.5)
    together = reconstructor.reconstruct(x, position, mask).images
    alone = reconstructor.reconstruct(x[1:2], position[1:2], mask[1:2]).images
    torch.testing.assert_close(alone[0], together[1], atol=1e-4, rtol=1e-4)


def test_the_projector_repeats_exactly_with_the_same_seed_and_uses_its_noise(nets, batch):
    x, position, mask = batch
    first = _reconstructor(nets, mode="projector", steps=6, seed=3).reconstruct(x, position, mask).images
    again = _reconstructor(nets, mode="projector", steps=6, seed=3).reconstruct(x, position, mask).images
    other = _reconstructor(nets, mode="projector", steps=6, seed=4).reconstruct(x, position, mask).images
    assert torch.equal(first, again) and not torch.equal(first, other)


@pytest.mark.parametrize("pixel_loss", ["l1", "l2"])
def test_pixels_outside_the_mask_do_not_steer_the_refinement(nets, batch, pixel_loss):
    # The projector starts from the mean w whatever the slice, so with the pixel loss alone (κ = 0: the
    # discriminator term sees the whole slice by design) nothing outside the mask may change the result.
    x, position, mask = batch
    half = mask.clone()
    half[:, :, 8:] = False
    outside, inside = x.clone(), x.clone()
    outside[:, :, 8:] = 1.0
    inside[:, :, :8] = inside[:, :, :8].flip(-1)
    reconstructor = _reconstructor(nets, mode="projector", steps=5, kappa=0.0, pixel_loss=pixel_loss)
    reference = reconstructor.reconstruct(x, position, half).images
    torch.testing.assert_close(reconstructor.reconstruct(outside, position, half).images, reference)
    assert not torch.allclose(reconstructor.reconstruct(inside, position, half).images, reference)


@pytest.mark.parametrize(
    "kwargs", [{"mode": "fast"}, {"mode": "accurate", "steps": 4}, {"mode": "projector", "steps": 4}]
)
def test_channels_last_networks_reconstruct_like_the_default_layout(nets, batch, monkeypatch, kwargs):
    x, position, mask = batch
    channels_last = Reconstructor(*copy.deepcopy(nets), InversionConfig(**kwargs), torch.device("cpu"))
    conv_weight = channels_last.encoder.trunk.blocks[0].conv0.weight
    assert conv_weight.is_contiguous(memory_format=torch.channels_last) and not conv_weight.is_contiguous()
    monkeypatch.setattr(inversion, "_memory_format", lambda device: torch.contiguous_format)
    default = Reconstructor(*copy.deepcopy(nets), InversionConfig(**kwargs), torch.device("cpu"))
    assert default.encoder.trunk.blocks[0].conv0.weight.is_contiguous()
    expected = default.reconstruct(x, position, mask)
    result = channels_last.reconstruct(x, position, mask)
    torch.testing.assert_close(result.images, expected.images, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(result.feature_residual, expected.feature_residual, atol=1e-5, rtol=1e-4)


def test_a_set_cancel_flag_stops_the_refinement(nets, batch):
    flag = CancelFlag()
    flag.set()
    with pytest.raises(CancelledError):
        _reconstructor(nets, mode="accurate", steps=5).reconstruct(*batch, cancel=flag)


def test_ssim_of_an_image_with_itself_is_one():
    image = torch.rand(2, 16, 16) * 2 - 1
    torch.testing.assert_close(ssim_map(image, image), torch.ones_like(image))
    assert ssim_map(image, -image).mean() < 0.5


@pytest.mark.parametrize(
    "kwargs",
    [{"mode": "slow"}, {"steps": -1}, {"lr": 0.0}, {"latent": "z"}, {"pixel_loss": "l3"}, {"kappa": -1}],
)
def test_refuses_an_invalid_inversion_configuration(kwargs):
    with pytest.raises(ConfigError):
        InversionConfig(**kwargs)


def test_defaults_follow_the_mode():
    assert InversionConfig(mode="fast").resolved_steps == 0
    assert InversionConfig(mode="projector").resolved_steps == 1000
    assert InversionConfig(mode="projector").resolved_latent == "w"
    assert InversionConfig(mode="accurate").resolved_latent == "w+"
