"""How the benchmarks combine calibrated opinions (``map_level_probe``, ``denoiser_track``): as the product
does, each opinion a percentile among normal slices near the position, a slice judged by its largest."""

from __future__ import annotations

import numpy as np
import torch

from AnomalyScoutLib.denoiser import Denoiser, DenoiserConfig
from benchmarks.denoiser_track import denoised
from benchmarks.map_level_probe import combined_percentiles
from benchmarks.slices import CaseInfo, SliceSet


def test_a_slice_beyond_every_normal_in_one_opinion_is_beyond_them_in_the_combination():
    rng = np.random.default_rng(0)
    normal_positions = np.repeat(np.linspace(0.05, 0.95, 10), 30)
    normal = {"a": rng.normal(size=300), "b": rng.normal(size=300)}
    test_positions = np.array([0.5, 0.5, 0.5])
    # slice 0 beyond every normal in a only, slice 1 in b only, slice 2 ordinary in both
    test = {"a": np.array([10.0, 0.0, 0.0]), "b": np.array([0.0, 10.0, 0.0])}
    combinations = {"a": ("a",), "b": ("b",), "both": ("a", "b")}
    out = combined_percentiles(normal, normal_positions, test, test_positions, combinations)
    assert out["a"][0] == 1.0 and out["a"][1] < 0.9
    assert out["b"][1] == 1.0 and out["b"][0] < 0.9
    assert out["both"][0] == out["both"][1] == 1.0
    # an ordinary slice ranks lower among the normals' own maxima than in either opinion alone
    assert out["both"][2] <= max(out["a"][2], out["b"][2])


def test_percentiles_are_taken_among_normals_near_the_slices_position():
    normal_positions = np.repeat([0.1, 0.9], 50)
    normal = {"a": np.concatenate([np.linspace(0, 1, 50), np.linspace(10, 11, 50)])}
    test = {"a": np.array([2.0, 2.0])}
    out = combined_percentiles(normal, normal_positions, test, np.array([0.1, 0.9]), {"a": ("a",)})
    assert out["a"][0] == 1.0 and out["a"][1] == 0.0  # high at the bottom, low at the top


def test_denoised_gives_the_networks_output_and_the_slice_scores_in_batches():
    torch.manual_seed(0)
    denoiser = Denoiser(DenoiserConfig(channels=(4, 8))).eval()
    n = 5
    images = np.random.default_rng(1).uniform(-1, 1, (n, 16, 16)).astype(np.float32)
    body = np.ones((n, 16, 16), dtype=bool)
    slices = SliceSet(images, np.linspace(0, 1, n).astype(np.float32), body, np.zeros_like(body),
                      np.zeros_like(body), np.zeros(n, dtype=np.int64), np.arange(n),
                      (CaseInfo("c", "normal", 0),))  # fmt: skip
    outputs, scores = denoised(denoiser, slices, batch=2)
    with torch.no_grad():
        expected = denoiser(torch.from_numpy(images)).numpy()
        expected_scores = denoiser.slice_scores(torch.from_numpy(images), torch.from_numpy(body)).numpy()
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5)
