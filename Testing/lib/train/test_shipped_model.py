"""The shipped model (models/default.safetensors) on normal phantom slices it has never seen."""

from __future__ import annotations

import pytest
import torch

from AnomalyScoutLib.model_file import DEFAULT_MODEL_PATH, AnomalyModel
from AnomalyScoutLib.phantom import make_phantom
from AnomalyScoutLib.train.data import preprocess_volume

#: The shipped model was trained on phantom seeds 1000-1013 (models/README.md); this one is held out.
HELD_OUT_SEED = 4242


@pytest.fixture(scope="module")
def shipped() -> AnomalyModel:
    return AnomalyModel.load(DEFAULT_MODEL_PATH, "cpu")


def test_the_shipped_model_is_small_and_describes_its_training(shipped):
    # small: a download of seconds, far under the 50 MB a committed file may be (11 MB with the denoiser)
    assert DEFAULT_MODEL_PATH.stat().st_size < 20e6
    assert shipped.resolution == 128 and shipped.architecture.conditional
    training = shipped.metadata["training"]
    assert training["gan"]["kimg"] > 0 and training["encoder"]["iterations"] > 0
    assert training["data"]["volumes"] > 0
    assert shipped.metadata["denoiser"]["training"]["steps_done"] > 0


@pytest.mark.parametrize("mode", ["fast", "accurate", "denoise"])
def test_the_shipped_model_is_calibrated_for_each_mode_it_offers(shipped, mode):
    from AnomalyScoutLib.engine import VolumeScorer
    from AnomalyScoutLib.inversion import InversionConfig
    from AnomalyScoutLib.scoring import ScoreConfig

    scorer = VolumeScorer(shipped, InversionConfig(mode=mode), ScoreConfig(), torch.device("cpu"))
    assert scorer.mode_calibration() is not None
    # every second opinion it hears is calibrated too: none is left out of the flags
    assert all(scorer.opinion_calibration(key) is not None for key in scorer.second_opinion_keys())


def test_the_encoder_reconstructs_held_out_normal_slices_better_than_the_mean_latent(shipped):
    volume = make_phantom(HELD_OUT_SEED, shape_xyz=(128, 128, 40)).volume
    images, positions, *_ = preprocess_volume(volume, shipped.resolution, shipped.window)
    x = images.float()[::2]
    position = positions[::2]
    generator = shipped.generator
    with torch.no_grad():
        encoded = generator.synthesis(shipped.encoder(x, position), noise_mode="const")
        mean_ws = generator.mean_w(position)[:, None].repeat(1, generator.num_ws, 1)
        average = generator.synthesis(mean_ws, noise_mode="const")
    encoder_error = (encoded - x).square().mean(dim=(1, 2, 3))
    mean_latent_error = (average - x).square().mean(dim=(1, 2, 3))
    assert encoder_error.mean() < 0.8 * mean_latent_error.mean()
    assert (encoder_error < mean_latent_error).float().mean() > 0.7
