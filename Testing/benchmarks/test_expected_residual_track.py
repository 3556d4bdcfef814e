"""benchmarks.expected_residual: normalised scores rank a lesion in smooth tissue above a normal edge."""

import numpy as np
import torch

from AnomalyScoutLib.expected_residual import ExpectedResidual
from AnomalyScoutLib.scoring import ScoreConfig
from benchmarks.detectors import Detection
from benchmarks.expected_residual import normalised_detection, relative_to_position, relative_to_scan
from benchmarks.slices import CaseInfo, SliceSet


def test_normalised_scores_rank_a_smooth_tissue_lesion_above_an_edge_a_raw_residual_prefers():
    size = 32
    recon = np.full((2, size, size), -0.2, np.float32)
    recon[:, :, size // 2 :] = 0.6
    images = recon.copy()
    images[0, :, size // 2 - 2 : size // 2 + 2] += 0.3  # slice 0: normal, its edge drawn off
    images[1, 4:8, 4:8] += 0.2  # slice 1: a small lesion in smooth tissue
    anomaly = np.zeros((2, size, size), bool)
    anomaly[1, 4:8, 4:8] = True
    body = np.ones((2, size, size), bool)
    cases = (CaseInfo("n", "normal", 0), CaseInfo("t", "tumour", 1))
    positions = np.array([0.5, 0.5], np.float32)
    slices = SliceSet(
        images, positions, body, anomaly, np.zeros_like(body), np.array([0, 1]), np.array([0, 0]), cases
    )
    edge_residual = np.zeros((4, size, size), np.float32)
    edge_residual[:, :, size // 2 - 3 : size // 2 + 3] = 0.3
    expected = ExpectedResidual.fit(
        torch.from_numpy(np.repeat(recon[:1], 4, 0)), torch.from_numpy(edge_residual + 0.01),
        torch.ones(4, size, size, dtype=torch.bool),
    )  # fmt: skip
    score = ScoreConfig(top_fraction=0.02)
    raw = np.abs(images - recon).reshape(2, -1)
    assert np.sort(raw[0])[-20:].mean() > np.sort(raw[1])[-20:].mean()  # the raw residual prefers the edge
    detection = normalised_detection(slices, recon, expected, score)
    assert detection.slice_scores[1] > 2 * detection.slice_scores[0]
    assert detection.maps.shape == images.shape


def test_scores_relative_to_their_scan_remove_a_scan_wide_offset():
    # Scan 1 is a noisier patient: every slice scores twice as high, its anomalous slice included.
    scores = np.array([1.0, 1.0, 1.0, 1.6, 2.0, 2.0, 2.0, 2.0])
    relative = relative_to_scan(Detection(maps=None, slice_scores=scores), np.array([0, 0, 0, 0, 1, 1, 1, 1]))
    assert relative.slice_scores[3] == max(relative.slice_scores)  # the raw maximum was a normal slice
    np.testing.assert_allclose(relative.slice_scores[4:], 1.0)


def test_scores_relative_to_their_position_remove_what_the_body_level_adds():
    # Normal pelvis slices (position 0.1) leave twice the score of normal abdomen slices (0.5).
    normal_positions = np.repeat([0.1, 0.5], 50)
    normal_scores = np.where(normal_positions < 0.3, 2.0, 1.0)
    positions = np.array([0.1, 0.5, 0.5])
    scores = np.array([2.0, 1.0, 1.5])  # a normal pelvis slice, a normal and an anomalous abdomen slice
    relative = relative_to_position(
        Detection(maps=None, slice_scores=scores), positions, normal_scores, normal_positions, bins=2
    )
    np.testing.assert_allclose(relative.slice_scores, [1.0, 1.0, 1.5])
