"""The anomaly-map head: shapes, inputs it needs, map range, top-k slice score, settings round trip."""

from __future__ import annotations

import pytest
import torch

from AnomalyScoutLib.anomaly_map.head import AnomalyHead, HeadConfig, head_from_metadata
from AnomalyScoutLib.errors import ConfigError

torch.set_num_threads(1)
SMALL = HeadConfig(channels=(4, 8), top_fraction=0.05)


def _inputs(n=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(n, size, size, generator=g) * 2 - 1
    body = torch.zeros(n, size, size, dtype=torch.bool)
    body[:, 4:28, 6:26] = True
    return image, image.flip(-1), torch.rand(n, generator=g), body


@pytest.mark.parametrize(
    ("config", "channels"),
    [
        (SMALL, 4),
        (HeadConfig(channels=(4, 8), use_reconstruction=False), 2),
        (HeadConfig(use_position=False), 3),
    ],
)
def test_the_input_stacks_slice_reconstruction_difference_and_position(config, channels):
    image, recon, position, _ = _inputs()
    stacked = AnomalyHead(config).inputs(image, recon, position)
    assert stacked.shape == (3, channels, 32, 32) and config.in_channels == channels
    assert torch.equal(stacked[:, 0], image)
    if config.use_reconstruction:
        assert torch.equal(stacked[:, 2], image - recon)
    if config.use_position:
        assert torch.equal(stacked[:, -1, 5, 7], position)


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_the_map_has_the_slice_size_lies_in_0_1_and_is_0_outside_the_body(stride):
    image, recon, position, body = _inputs()
    head = AnomalyHead(HeadConfig(channels=(4, 8), stride=stride)).eval()
    maps = head.anomaly_map(image, recon, position, body)
    assert maps.shape == image.shape
    assert maps.min() >= 0 and maps.max() <= 1
    assert (maps[~body] == 0).all() and (maps[body] > 0).all()


def test_a_head_without_reconstruction_ignores_it_and_one_with_it_needs_it():
    image, recon, position, _ = _inputs()
    alone = AnomalyHead(HeadConfig(channels=(4, 8), use_reconstruction=False)).eval()
    assert torch.equal(alone(image, None, position), alone(image, recon, position))
    with pytest.raises(ValueError, match="reconstruction"):
        AnomalyHead(SMALL)(image, None, position)


def test_the_slice_score_is_the_mean_of_the_top_fraction_of_body_pixels():
    _, _, _, body = _inputs(n=2)
    maps = torch.zeros(2, 32, 32)
    maps[1, 10, 10:15] = 1.0  # 5 hot pixels in slice 1
    head = AnomalyHead(HeadConfig(channels=(4, 8), top_fraction=10 / body[0].sum().item()))
    scores = head.slice_scores(maps * body, body)
    assert scores[0] == 0 and scores[1] == pytest.approx(0.5)


def test_refuses_inputs_of_a_size_the_network_cannot_halve():
    image, recon, position, _ = _inputs(size=30)
    with pytest.raises(ValueError, match="multiples of 4"):
        AnomalyHead(SMALL)(image, recon, position)


def test_settings_round_trip_and_unknown_or_invalid_ones_are_refused():
    assert HeadConfig.from_dict(SMALL.to_dict()) == SMALL
    assert head_from_metadata({"config": SMALL.to_dict()}).config == SMALL
    with pytest.raises(ConfigError, match="unknown head settings: colour"):
        HeadConfig.from_dict({**SMALL.to_dict(), "colour": 1})
    with pytest.raises(ConfigError, match="top_fraction"):
        HeadConfig(top_fraction=0.0)
    with pytest.raises(ConfigError, match="two positive levels"):
        HeadConfig(channels=(8,))
    with pytest.raises(ConfigError, match="config"):
        head_from_metadata({"channels": [4, 8]})
