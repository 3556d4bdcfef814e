"""The harness places slices as ``anomalyscout score`` does for the model under test (``SlicePlacer``)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from AnomalyScoutLib.inversion import InversionConfig
from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.nets.architecture import ArchitectureConfig
from AnomalyScoutLib.position import placement
from AnomalyScoutLib.position.network import PositionRegressor, RegressorConfig
from AnomalyScoutLib.preprocessing import HUWindow
from AnomalyScoutLib.scoring import ScoreConfig
from benchmarks.data import BY_INDEX, LIVER_LABEL, SlicePlacer, volume_slices
from benchmarks.ours import GeneratorDetector
from benchmarks.slices import CaseInfo, SliceSet

torch.set_num_threads(1)
TINY = ArchitectureConfig(32, (16, 16, 8, 8), z_dim=16, w_dim=16, mapping_layers=2, position_frequencies=2)
N = 24
TRUTH = (np.arange(N) + 0.5) / N


def _slices(case, placer: SlicePlacer, crop: slice = slice(None)) -> SliceSet:
    spacing = case.volume.spacing_xyz
    hu = case.volume.array_zyx[crop]
    return volume_slices(
        hu, (spacing[2], spacing[1], spacing[0]), np.zeros(hu.shape, bool), case.labels[crop] == LIVER_LABEL,
        CaseInfo("t", "normal", 0), 32, HUWindow(), placer,
    )  # fmt: skip


@pytest.fixture()
def model_with_regressor() -> AnomalyModel:
    torch.manual_seed(0)
    model = AnomalyModel.create(TINY, seed=0)
    model.position_regressor = PositionRegressor(RegressorConfig(resolution=16, channels=(4, 8))).eval()
    return model


def test_without_a_regressor_slices_are_placed_by_index_and_the_caches_keep_their_names(tiny_phantom):
    placer = SlicePlacer.for_model(AnomalyModel.create(TINY, seed=0))
    assert placer == BY_INDEX and placer.key is None
    assert placer.data_key(["phantom", 2]) == json.dumps(["phantom", 2])
    np.testing.assert_allclose(_slices(tiny_phantom, placer).positions, TRUTH, rtol=1e-6)


def test_with_a_regressor_the_slices_are_placed_by_anatomy_as_score_places_them(
    tiny_phantom, model_with_regressor, monkeypatch
):
    crop = slice(10, N)
    monkeypatch.setattr(placement, "estimate_slices", lambda *args: TRUTH[crop])
    placer = SlicePlacer.for_model(model_with_regressor)  # auto, as score's default
    assert placer.method == "anatomy" and placer.key is not None and placer.key.startswith("anatomy-")
    assert placer.data_key(["phantom", 2]) != json.dumps(["phantom", 2])
    assert _slices(tiny_phantom, placer, crop).positions == pytest.approx(TRUTH[crop], abs=0.02)
    by_index = SlicePlacer.for_model(model_with_regressor, "index")
    assert by_index.key is None
    assert _slices(tiny_phantom, by_index, crop).positions == pytest.approx(
        (np.arange(N - 10) + 0.5) / (N - 10)
    )


def test_our_detector_conditions_on_positions_clipped_to_the_trained_range_as_the_engine(tmp_path):
    path = AnomalyModel.create(TINY, seed=0).save(tmp_path / "tiny.safetensors")
    detector = GeneratorDetector("ours", path, InversionConfig(mode="fast"), ScoreConfig())
    seen = []
    reconstruct = detector.reconstructor.reconstruct
    detector.reconstructor.reconstruct = lambda x, p, body: seen.append(p.clone()) or reconstruct(x, p, body)
    empty = np.zeros((3, 32, 32), dtype=bool)
    positions = np.array([-0.1, 0.5, 1.2], dtype=np.float32)  # anatomy may place slices beyond the ends
    slices = SliceSet(
        empty.astype(np.float32), positions, ~empty, empty, empty,
        np.zeros(3, np.int64), np.arange(3), (CaseInfo("c", "normal", 0),),
    )  # fmt: skip
    detector.reconstruct(slices)
    assert torch.cat(seen).tolist() == pytest.approx([0.0, 0.5, 1.0])


def test_a_slice_set_made_before_the_placement_is_unchanged_by_it(tiny_phantom):
    # Positions by index lie inside (0, 1): clipping them for the networks changes nothing.
    slices = _slices(tiny_phantom, BY_INDEX)
    np.testing.assert_array_equal(slices.condition, slices.positions)
    assert replace(slices, positions=slices.positions + 1).condition.max() == 1.0
