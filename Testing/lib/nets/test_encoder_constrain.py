"""Encoder.constrain narrows the code space exactly as it claims (offsets scaled, W instead of W+)."""

import pytest
import torch

from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.nets.architecture import ArchitectureConfig
from AnomalyScoutLib.nets.encoder import Encoder

TINY = ArchitectureConfig(32, (16, 16, 8, 8), z_dim=16, w_dim=16, mapping_layers=2, position_frequencies=2)


def _encoder_and_input() -> tuple[Encoder, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    encoder = Encoder(TINY).eval()
    with torch.no_grad():
        encoder.mean_w_table.normal_()
        encoder.out.bias.normal_()
    return encoder, torch.randn(3, 1, 32, 32), torch.tensor([0.1, 0.5, 0.9])


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0])
def test_offsets_from_the_mean_latent_are_scaled(scale):
    encoder, x, p = _encoder_and_input()
    with torch.no_grad():
        before = encoder(x, p) - encoder.mean_w(p)[:, None]
        encoder.constrain(offset_scale=scale)
        after = encoder(x, p) - encoder.mean_w(p)[:, None]
    assert before.abs().max() > 0.01
    torch.testing.assert_close(after, scale * before, atol=1e-5, rtol=1e-5)


def test_single_w_gives_every_layer_the_mean_offset():
    encoder, x, p = _encoder_and_input()
    with torch.no_grad():
        before = encoder(x, p) - encoder.mean_w(p)[:, None]
        encoder.constrain(offset_scale=0.5, single_w=True)
        after = encoder(x, p) - encoder.mean_w(p)[:, None]
    assert (before - before.mean(dim=1, keepdim=True)).abs().max() > 0.01  # W+ codes differ per layer
    expected = 0.5 * before.mean(dim=1, keepdim=True).expand_as(before)
    torch.testing.assert_close(after, expected, atol=1e-5, rtol=1e-5)


def test_a_negative_scale_is_refused():
    encoder, _, _ = _encoder_and_input()
    with pytest.raises(ConfigError, match="offset scale"):
        encoder.constrain(offset_scale=-1.0)
