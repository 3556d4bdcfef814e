"""Shapes, conditioning and argument checks of the generator, discriminator and encoder."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.nets.architecture import PRESETS, ArchitectureConfig, preset
from AnomalyScoutLib.nets.discriminator import Discriminator, ResidualDownBlock, ResidualTrunk
from AnomalyScoutLib.nets.encoder import Encoder
from AnomalyScoutLib.nets.generator import Generator
from AnomalyScoutLib.nets.layers import EqualConv2d, ModulatedConv2d

torch.set_num_threads(1)


def tiny(resolution: int, conditional: bool = True) -> ArchitectureConfig:
    levels = resolution.bit_length() - 2
    return ArchitectureConfig(
        resolution, (8,) * levels, z_dim=8, w_dim=8, mapping_layers=2, conditional=conditional
    )


@pytest.mark.parametrize("resolution", [8, 64, 128, 256, 512])
def test_every_network_has_the_documented_shapes_at_each_resolution(resolution):
    torch.manual_seed(0)
    config = tiny(resolution)
    generator, discriminator, encoder = Generator(config), Discriminator(config), Encoder(config)
    position = torch.tensor([0.1, 0.9])
    ws = generator.mapping(torch.randn(2, 8), position)
    assert ws.shape == (2, config.num_ws, 8)
    images = generator.synthesis(ws, noise_mode="const")
    assert images.shape == (2, 1, resolution, resolution)
    assert discriminator(images, position).shape == (2,)
    assert discriminator.features(images, position).shape == (2, discriminator.feature_dim)
    assert encoder(images, position).shape == (2, config.num_ws, 8)
    assert generator.mean_w(position).shape == (2, 8)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_consistent_configurations(name):
    config = preset(name)
    assert len(config.channels) == config.num_levels
    assert ArchitectureConfig.from_dict(config.to_dict()) == config


def test_the_position_changes_generated_images_and_logits_only_when_conditional():
    torch.manual_seed(0)
    z = torch.randn(1, 8).repeat(2, 1)
    position = torch.tensor([0.1, 0.9])
    for conditional in (True, False):
        generator, discriminator = Generator(tiny(16, conditional)), Discriminator(tiny(16, conditional))
        images = generator(z, position, noise_mode="const")
        image_change = (images[0] - images[1]).abs().max().item()
        same_image = images[:1].repeat(2, 1, 1, 1)
        logits = discriminator(same_image, position)
        logit_change = (logits[0] - logits[1]).abs().item()
        if conditional:
            assert image_change > 1e-4 and logit_change > 1e-6
        else:
            assert image_change == 0.0 and logit_change == 0.0


def test_const_noise_is_deterministic_and_random_noise_is_not():
    torch.manual_seed(0)
    generator = Generator(tiny(16))
    for layer in generator.modules():
        if hasattr(layer, "noise_strength"):
            layer.noise_strength.data.fill_(0.5)
    ws = generator.mapping(torch.randn(1, 8), torch.tensor([0.5]))
    assert torch.equal(
        generator.synthesis(ws, noise_mode="const"), generator.synthesis(ws, noise_mode="const")
    )
    assert not torch.equal(
        generator.synthesis(ws, noise_mode="random"), generator.synthesis(ws, noise_mode="random")
    )
    with pytest.raises(ValueError, match="noise_mode"):
        generator.synthesis(ws, noise_mode="frozen")


def test_mean_w_is_the_mean_of_the_mapping_and_the_untrained_encoder_starts_near_it():
    torch.manual_seed(0)
    config = tiny(16)
    generator, encoder = Generator(config), Encoder(config)
    position = torch.tensor([0.25, 0.75])
    mean = generator.mean_w(position)
    many = generator.mapping(torch.randn(4000, 8), position[:1].repeat(4000))[:, 0]
    spread = many.std(dim=0).mean()
    assert (many.mean(dim=0) - mean[0]).abs().max() < 0.2 * spread
    encoder.anchor_to(generator)
    assert torch.allclose(encoder.mean_w(position), mean, atol=0.05 * spread.item())
    ws = encoder(torch.randn(2, 1, 16, 16), position)
    assert (ws - mean[:, None]).abs().mean() < spread


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"resolution": 96}, "power of two"),
        ({"channels": (8, 8)}, "one width per resolution"),
        ({"w_dim": 0}, "w_dim"),
    ],
)
def test_invalid_configurations_are_refused_with_the_argument_named(changes, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(tiny(16), **changes)


def test_unknown_configuration_keys_and_names_are_refused():
    with pytest.raises(ConfigError, match="unknown architecture keys: depth"):
        ArchitectureConfig.from_dict({**tiny(16).to_dict(), "depth": 3})
    with pytest.raises(ConfigError, match="unknown configuration"):
        preset("huge")


def test_wrong_input_shapes_are_refused_with_the_expected_shape():
    config = tiny(16)
    with pytest.raises(ValueError, match=r"\(N, 1, 16, 16\)"):
        Discriminator(config)(torch.zeros(2, 1, 32, 32), torch.zeros(2))
    with pytest.raises(ValueError, match="position"):
        Generator(config).mapping(torch.zeros(2, 8), torch.zeros(3))


def test_layers_with_folded_gains_compute_the_textbook_formulas():
    """The leaky ReLU gain, the residual sqrt(1/2) and the modulation are folded into weights or reordered for
    speed (nets.layers); written out plainly, the same layers must give the same numbers."""
    torch.manual_seed(0)
    gain = math.sqrt(2.0)
    x = torch.randn(3, 4, 16, 16)
    conv = EqualConv2d(4, 6, 3, output_scale=0.5)
    with torch.no_grad():
        conv.bias.normal_()
    plain = F.conv2d(x, conv.weight / math.sqrt(4 * 9), conv.bias, padding=1)
    torch.testing.assert_close(conv(x), F.leaky_relu(plain, 0.2) * gain * 0.5, rtol=1e-5, atol=1e-5)
    from_gray, gray = EqualConv2d(1, 6, 1), torch.randn(3, 1, 16, 16)  # computed as a broadcast, not a conv
    with torch.no_grad():
        from_gray.bias.normal_()
    plain = F.conv2d(gray, from_gray.weight, from_gray.bias)
    torch.testing.assert_close(from_gray(gray), F.leaky_relu(plain, 0.2) * gain, rtol=1e-5, atol=1e-5)

    modulated = ModulatedConv2d(4, 6, w_dim=5, resolution=32, up=True)
    with torch.no_grad():
        modulated.noise_strength.fill_(0.3)
        modulated.bias.normal_()
    w = torch.randn(3, 5)
    styles = modulated.affine(w)
    weight = modulated.weight[None] * styles[:, None, :, None, None] / math.sqrt(4 * 9)  # (N, out, in, 3, 3)
    demod = weight.square().sum(dim=(2, 3, 4)).add(1e-8).rsqrt()
    upsampled = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    per_sample = torch.cat([F.conv2d(upsampled[i : i + 1], weight[i], padding=1) for i in range(3)])
    expected = per_sample * demod[:, :, None, None] + 0.3 * modulated.noise_const
    expected = expected + modulated.bias[:, None, None]
    expected = F.leaky_relu(expected, 0.2) * gain
    torch.testing.assert_close(modulated(x, w, noise_mode="const"), expected, rtol=1e-5, atol=1e-5)

    block = ResidualDownBlock(4, 6)

    def conv_lrelu(layer: EqualConv2d, h: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(F.conv2d(h, layer.weight / math.sqrt(h.shape[1] * 9), layer.bias, padding=1), 0.2)

    main = F.avg_pool2d(conv_lrelu(block.conv1, conv_lrelu(block.conv0, x) * gain) * gain, 2)
    expected = (main + F.conv2d(F.avg_pool2d(x, 2), block.skip.weight / 2.0)) * math.sqrt(0.5)
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_the_trunk_keeps_the_layout_its_weights_were_put_in(layout, monkeypatch):
    """A one-channel image is both NCHW- and NHWC-contiguous, so from_gray returns NCHW whatever was chosen;
    the trunk must hand its blocks the layout of their weights, or every full-resolution layer runs slowly."""
    trunk = ResidualTrunk(tiny(32)).to(memory_format=layout)
    seen = []
    monkeypatch.setattr(trunk.blocks[0], "forward", lambda x: seen.append(x) or x)
    with torch.no_grad():
        trunk(torch.randn(2, 1, 32, 32).contiguous(memory_format=layout))
    assert seen[0].is_contiguous(memory_format=layout)
    assert seen[0].is_contiguous() == (layout == torch.contiguous_format)
