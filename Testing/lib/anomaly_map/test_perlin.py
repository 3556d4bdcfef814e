"""Perlin noise and regions: seeded, smooth, of the requested extent and inside the given area."""

from __future__ import annotations

import pytest
import torch

from AnomalyScoutLib.anomaly_map.perlin import perlin_noise, perlin_region

torch.set_num_threads(1)


def test_the_same_seed_gives_the_same_noise_and_another_seed_other_noise():
    a = perlin_noise((40, 48), (2, 3), torch.Generator().manual_seed(1))
    b = perlin_noise((40, 48), (2, 3), torch.Generator().manual_seed(1))
    c = perlin_noise((40, 48), (2, 3), torch.Generator().manual_seed(2))
    assert a.shape == (40, 48)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_noise_is_zero_on_the_lattice_and_smooth_between():
    noise = perlin_noise((64, 64), (4, 4), torch.Generator().manual_seed(0))
    assert noise[::16, ::16].abs().max() < 1e-6  # gradient noise vanishes at lattice points
    assert noise.diff(dim=0).abs().max() < 0.2 and noise.diff(dim=1).abs().max() < 0.2
    assert noise.std() > 0.05


def test_more_cells_make_finer_noise():
    coarse = perlin_noise((64, 64), (1, 1), torch.Generator().manual_seed(0))
    fine = perlin_noise((64, 64), (8, 8), torch.Generator().manual_seed(0))
    assert fine.diff(dim=1).abs().mean() > 2 * coarse.diff(dim=1).abs().mean()


def test_refuses_empty_lattices():
    with pytest.raises(ValueError, match="positive"):
        perlin_noise((8, 8), (0, 2), torch.Generator())


def test_a_region_lies_inside_the_area_and_covers_a_part_of_it():
    area = torch.zeros(64, 64, dtype=torch.bool)
    area[10:50, 5:45] = True
    shares = []
    for seed in range(10):
        region = perlin_region(
            (64, 64), torch.Generator().manual_seed(seed), within=area, coverage=(0.2, 0.4)
        )
        assert not (region & ~area).any()
        shares.append(float(region[area].float().mean()))
    assert 0.02 < min(shares) and max(shares) < 0.45


def test_an_empty_area_gives_an_empty_region():
    region = perlin_region((16, 16), torch.Generator(), within=torch.zeros(16, 16, dtype=torch.bool))
    assert not region.any()
