"""ExpectedResidual: residuals measured against what normal tissue of the same appearance leaves."""

import pytest
import torch

from AnomalyScoutLib.expected_residual import ExpectedResidual, appearance_bins


def _normal_slices(n: int = 6, size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reconstructions with one vertical edge; normal residuals are large along the edge, small elsewhere."""
    recon = torch.full((n, size, size), -0.2)
    recon[:, :, size // 2 :] = 0.6
    generator = torch.Generator().manual_seed(0)
    residual = 0.01 + 0.002 * torch.rand(n, size, size, generator=generator)
    residual[:, :, size // 2 - 2 : size // 2 + 2] = 0.2  # edges are drawn a few pixels off
    return recon, residual, torch.ones(n, size, size, dtype=torch.bool)


def test_a_residual_in_smooth_tissue_outranks_the_same_residual_on_an_edge():
    recon, residual, mask = _normal_slices()
    expected = ExpectedResidual.fit(recon, residual, mask)
    normal = expected.normalise(residual, recon)
    assert normal[mask].mean() == pytest.approx(1.0, abs=0.1)
    lesion = residual[:1].clone()
    lesion[0, 5:9, 4:8] = 0.2  # as large as the edge's residual, but in smooth tissue
    scored = expected.normalise(lesion, recon[:1])[0]
    assert scored[5:9, 4:8].mean() > 10 * scored[:, 14:18].mean()


def test_rare_appearances_fall_back_to_the_overall_mean():
    recon, residual, mask = _normal_slices()
    expected = ExpectedResidual.fit(recon, residual, mask)
    unseen = torch.full((1, 32, 32), 0.95)  # an intensity no normal pixel had
    overall = residual.mean().item()
    assert expected.expected(unseen)[0, 10, 10].item() == pytest.approx(overall, rel=1e-4)


def test_edge_bins_see_edges_within_their_reach():
    recon = torch.zeros(1, 16, 16)
    recon[:, :, 8:] = 1.0
    near = appearance_bins(recon, 4, 5, edge_reach_px=2)[0]
    assert near[0, 5] == near[0, 7]  # two pixels from the edge: the edge's class
    assert near[0, 2] != near[0, 7]


def test_round_trip_and_bad_tables():
    recon, residual, mask = _normal_slices()
    expected = ExpectedResidual.fit(recon, residual, mask, intensity_bins=8, edge_bins=4)
    again = ExpectedResidual.from_dict(expected.to_dict())
    torch.testing.assert_close(again.expected(recon), expected.expected(recon), atol=1e-5, rtol=1e-4)
    broken = {**expected.to_dict(), "table": expected.to_dict()["table"][:-1]}
    with pytest.raises(ValueError, match="entries"):
        ExpectedResidual.from_dict(broken)
    with pytest.raises(ValueError, match="no body pixel"):
        ExpectedResidual.fit(recon, residual, torch.zeros_like(mask))
