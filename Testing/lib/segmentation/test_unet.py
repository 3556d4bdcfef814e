"""Shapes, argument checks and features of the small 2-D U-Net."""

from __future__ import annotations

import pytest
import torch

from AnomalyScoutLib.segmentation.unet import UNet

torch.set_num_threads(1)


@pytest.mark.parametrize(
    ("kwargs", "input_shape", "expected_shape"),
    [
        ({"channels": (4, 8)}, (2, 1, 16, 16), (2, 1, 16, 16)),
        ({"channels": (4, 8, 16)}, (1, 1, 32, 24), (1, 1, 32, 24)),
        ({"channels": (4, 8, 16), "out_channels": 3}, (3, 1, 16, 16), (3, 3, 16, 16)),
        ({"channels": (4, 8), "in_channels": 2, "dropout": 0.0}, (1, 2, 8, 8), (1, 1, 8, 8)),
    ],
)
def test_output_has_the_input_resolution_and_one_map_per_output_channel(kwargs, input_shape, expected_shape):
    assert UNet(**kwargs)(torch.zeros(input_shape)).shape == expected_shape


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": (8,)}, "two levels"),
        ({"channels": (8, 0)}, "positive"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_refuses_illegal_configurations_naming_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UNet(**kwargs)


def test_refuses_an_input_whose_size_the_pooling_cannot_divide():
    with pytest.raises(ValueError, match="multiples of 4"):
        UNet(channels=(4, 8, 16))(torch.zeros(1, 1, 18, 16))


def test_features_are_one_vector_per_slice_of_bottleneck_width():
    net = UNet(channels=(4, 8, 12)).eval()
    features = net.features(torch.randn(5, 1, 16, 16))
    assert features.shape == (5, 12)
    assert not torch.allclose(features[0], features[1])
