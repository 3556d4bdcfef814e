"""Local patch matching: a slice of normal patches scores zero, even shifted; a foreign patch does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.baselines.patch_match import LocalPatchMatch
from benchmarks.slices import CaseInfo, SliceSet

torch.set_num_threads(1)


def _slices(images: np.ndarray, positions: np.ndarray) -> SliceSet:
    n = len(images)
    mask = np.ones(images.shape, dtype=bool)
    return SliceSet(
        images=images.astype(np.float32),
        positions=positions.astype(np.float32),
        body=mask,
        anomaly=~mask,
        organ=~mask,
        case=np.zeros(n, dtype=np.int64),
        slice_index=np.arange(n),
        cases=(CaseInfo("normal-0", "normal", 0),),
    )


def test_a_shifted_normal_slice_matches_and_a_foreign_patch_does_not():
    rng = np.random.default_rng(0)
    normal = np.clip(rng.normal(0.0, 0.3, (2, 32, 32)), -1, 1)
    train = _slices(normal, np.array([0.4, 0.6]))
    matcher = LocalPatchMatch(patch=5, search=4, step=1, bank=2)
    matcher.fit(train)

    shifted = np.roll(normal[0], (2, -3), axis=(0, 1))
    odd = shifted.copy()
    odd[12:20, 12:20] = 0.9  # nothing like it in the bank
    test = _slices(np.stack([shifted, odd]), np.array([0.45, 0.45]))
    maps = matcher.detect(test).maps
    inner = (slice(6, 26), slice(6, 26))  # away from where the roll wrapped around
    assert maps[0][inner].max() == pytest.approx(0.0, abs=1e-5)
    assert maps[1][14:18, 14:18].min() > 0.5
    assert matcher.detect(test).slice_scores[1] > matcher.detect(test).slice_scores[0]


def test_refuses_an_even_patch_and_detect_before_fit():
    with pytest.raises(ValueError, match="odd"):
        LocalPatchMatch(patch=4)
    with pytest.raises(RuntimeError, match="fit"):
        LocalPatchMatch().detect(_slices(np.zeros((1, 8, 8)), np.array([0.5])))
