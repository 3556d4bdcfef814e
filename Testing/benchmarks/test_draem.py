"""DRAEM baseline: the reconstructive network learns with the head, validation reads it as it now is."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from AnomalyScoutLib.anomaly_map.data import NormalSlices
from AnomalyScoutLib.anomaly_map.head import AnomalyHead, HeadConfig
from AnomalyScoutLib.anomaly_map.training import HeadTrainingOptions
from AnomalyScoutLib.preprocessing import HUWindow
from benchmarks.baselines.draem import DraemDetector, ReconstructiveNet, _JointTrainer
from benchmarks.slices import CaseInfo, SliceSet, concatenate

torch.set_num_threads(1)


def _cases(n_cases: int = 3, n: int = 8, size: int = 32, seed: int = 0) -> SliceSet:
    """Normal cases: a smooth disc of 'tissue' with noise inside a body mask, positions spread over (0, 1)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    body = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2
    parts = []
    for c in range(n_cases):
        images = np.where(body, 0.2 + rng.normal(0.0, 0.05, (n, size, size)), -1.0).astype(np.float32)
        masks = np.broadcast_to(body, images.shape).copy()
        parts.append(
            SliceSet(
                images,
                ((np.arange(n) + 0.5) / n).astype(np.float32),
                masks,
                np.zeros(images.shape, bool),
                np.zeros(images.shape, bool),
                np.zeros(n, np.int64),
                np.arange(n),
                (CaseInfo(f"normal-{c}", "normal", 1000 + c),),
            )
        )
    return concatenate(parts)


def test_the_reconstructive_network_gives_one_slice_per_slice():
    net = ReconstructiveNet(width=2)
    assert net(torch.zeros(3, 32, 32)).shape == (3, 32, 32)


def test_joint_training_lowers_the_loss_and_validation_reads_the_network_as_it_now_is():
    detector = DraemDetector(minutes=0, steps=40, width=4, head_width=4, validate_every=10)
    train = _cases()
    detector.fit(train)
    assert detector.training["steps_done"] == 40 and detector.training["best"] is not None
    # the map is the head's, a probability that is 0 outside the body
    detection = detector.detect(train)
    assert detection.maps.shape == train.images.shape and len(detection.slice_scores) == len(train)
    assert detection.maps[~train.body].max() == 0 and 0 <= detection.maps.min() and detection.maps.max() <= 1


def test_validation_reconstructs_with_the_trained_network_not_the_initial_one():
    train = _cases()
    slices = NormalSlices(
        torch.from_numpy(train.images),
        torch.from_numpy(train.condition),
        torch.from_numpy(train.body),
        torch.from_numpy(train.case),
    )
    training, validation = slices.split(1)
    torch.manual_seed(0)
    trainer = _JointTrainer(
        AnomalyHead(HeadConfig(channels=(4, 8))),
        ReconstructiveNet(4),
        training,
        validation,
        HeadTrainingOptions(steps=30, validate_every=10, validation_slices=8),
        HUWindow(),
        torch.device("cpu"),
    )
    initial = trainer._validation.reconstructions.clone()
    weights = trainer.reconstructive.out.weight.detach().clone()
    losses = [trainer.train_step() for _ in range(30)]
    assert not torch.equal(trainer.reconstructive.out.weight, weights)  # trained with the head, not frozen
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    trainer.validate()
    v = trainer._validation
    now = trainer._reconstruct(v.images, v.positions, v.body)
    torch.testing.assert_close(v.reconstructions, now)
    assert not torch.allclose(initial, now)


def test_detect_before_fit_and_bad_settings_are_refused():
    with pytest.raises(RuntimeError, match="fit"):
        DraemDetector().detect(_cases(n_cases=1))
    with pytest.raises(ValueError, match="minutes"):
        DraemDetector(minutes=-1)
