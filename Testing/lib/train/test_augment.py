"""DiffAugment: each augmentation does what it says, stays differentiable and never mirrors anatomy."""

from __future__ import annotations

import pytest
import torch

from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.train.augment import diff_augment, parse_policy


def _ramp(n: int = 8, size: int = 16) -> torch.Tensor:
    return torch.linspace(-0.9, 0.9, size).repeat(n, 1, size, 1)  # brighter towards the right


def test_translation_shifts_content_and_fills_with_air_without_mirroring():
    torch.manual_seed(0)
    x = _ramp()
    out = diff_augment(x, ("translation",))
    assert out.shape == x.shape
    assert set(out.unique().tolist()) <= set(x.unique().tolist()) | {-1.0}
    # A shift keeps the left-to-right order of the ramp: columns never decrease (air excepted).
    row = out[:, 0, 8]
    for sample in row:
        inside = sample[sample > -1.0]
        assert torch.all(inside[1:] >= inside[:-1])


def test_cutout_blanks_one_square_of_a_quarter_side():
    torch.manual_seed(0)
    out = diff_augment(torch.ones(4, 1, 16, 16), ("cutout",))
    assert torch.all((out == 0).sum(dim=(1, 2, 3)) == 16)


def test_colour_changes_brightness_and_contrast_per_image_and_gradients_flow():
    torch.manual_seed(0)
    x = _ramp().requires_grad_(True)
    out = diff_augment(x, parse_policy("color,translation,cutout"))
    means = out.mean(dim=(1, 2, 3))
    assert means.std() > 1e-3
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_policies_are_parsed_and_unknown_names_refused():
    assert parse_policy("none") == () and parse_policy("") == ()
    assert parse_policy("translation, cutout") == ("translation", "cutout")
    with pytest.raises(ConfigError, match="flip"):
        parse_policy("translation,flip")
