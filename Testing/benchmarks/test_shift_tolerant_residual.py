"""The shift-tolerant residual forgives displacement within its radius and nothing else."""

import torch

from benchmarks.shift_tolerant_residual import shift_tolerant_residual


def _square(offset: int) -> torch.Tensor:
    image = torch.zeros(1, 24, 24)
    image[:, 8 + offset : 14 + offset, 8:14] = 1.0
    return image


def test_radius_zero_is_the_plain_residual():
    x, r = torch.rand(2, 16, 16), torch.rand(2, 16, 16)
    assert torch.equal(shift_tolerant_residual(x, r, 0), (x - r).abs())


def test_an_edge_drawn_within_the_radius_costs_nothing_and_one_beyond_it_still_shows():
    image = _square(0)
    assert shift_tolerant_residual(image, _square(2), 2).max() == 0
    assert shift_tolerant_residual(image, _square(3), 2).max() == 1.0


def test_a_lesion_absent_from_the_reconstruction_keeps_its_full_residual():
    image, reconstruction = _square(0), torch.zeros(1, 24, 24)
    residual = shift_tolerant_residual(image, reconstruction, 3)
    assert torch.equal(residual, image)
