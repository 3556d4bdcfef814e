"""The precision probe times each fast-mode network and runs the same slices in both precisions."""

from __future__ import annotations

import torch

from AnomalyScoutLib.anomaly_map.head import AnomalyHead, HeadConfig
from AnomalyScoutLib.anomaly_map.training import attach_head
from AnomalyScoutLib.model_file import AnomalyModel
from benchmarks.precision_probe import NETWORKS, timed_pass

torch.set_num_threads(1)


def test_a_pass_times_every_network_and_bf16_stays_near_fp32(tiny_model_file):
    model = AnomalyModel.load(tiny_model_file)
    attach_head(model, AnomalyHead(HeadConfig(channels=(4, 8))), {})
    res = model.resolution
    images = torch.rand(40, res, res) * 2 - 1  # two batches, the second one short
    positions, body = torch.linspace(0.1, 0.9, 40), torch.ones(40, res, res, dtype=torch.bool)
    seconds, fp32, fp32_scores = timed_pass(model, images, positions, body, "fp32")
    assert set(seconds) == set(NETWORKS) and all(v > 0 for v in seconds.values())
    assert fp32.shape == (40, res, res) and fp32_scores.shape == (40,) and fp32.dtype == torch.float32
    again = timed_pass(model, images, positions, body, "fp32")[1]
    torch.testing.assert_close(again, fp32)  # fp32 repeats exactly
    bf16 = timed_pass(model, images, positions, body, "bf16")[1]
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)  # autocast did run in bf16
    assert (bf16 - fp32).abs().mean() < 0.05
