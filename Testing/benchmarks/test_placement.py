"""The harness places slices as ``anomalyscout score`` does for the model under test (``SlicePlacer``), and
leaves out the slices its range gate would not score."""

from __future__ import annotations

import argparse
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
from benchmarks import phantom_track
from benchmarks.data import BY_INDEX, LIVER_LABEL, SlicePlacer, in_range_only, volume_slices
from benchmarks.ours import GeneratorDetector
from benchmarks.results_io import TrackStart
from benchmarks.slices import CaseInfo, SliceSet, concatenate

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


# --- the range gate: the harness leaves out exactly the slices the product would not score ---------------

#: Estimates that run past the lung bases: the fit puts the last 4 of the 24 slices above the model's range.
ABOVE = TRUTH * 1.6 - 0.2


def _gated_volume(case, placer: SlicePlacer) -> SliceSet:
    """The tiny phantom with a one-pixel "anomaly" on slice 5 (in range) and on slice 22 (above the range)."""
    anomaly = np.zeros(case.volume.array_zyx.shape, dtype=bool)
    anomaly[[5, 22], 32, 32] = True
    spacing = case.volume.spacing_xyz
    return volume_slices(
        case.volume.array_zyx, (spacing[2], spacing[1], spacing[0]), anomaly, case.labels == LIVER_LABEL,
        CaseInfo("gated", "blob", 0), 32, HUWindow(), placer,
    )  # fmt: skip


def test_the_harness_marks_the_slices_the_product_gates_out_by_the_products_own_call(
    tiny_phantom, model_with_regressor, monkeypatch
):
    monkeypatch.setattr(placement, "estimate_slices", lambda *args: ABOVE)
    placer = SlicePlacer.for_model(model_with_regressor)
    slices = _gated_volume(tiny_phantom, placer)
    spacing = tiny_phantom.volume.spacing_xyz
    _, product = placement.place_and_gate(
        tiny_phantom.volume.array_zyx,
        (spacing[2], spacing[1], spacing[0]),
        model_with_regressor.position_regressor,
    )
    np.testing.assert_array_equal(slices.out_of_range, product.reason)
    assert slices.out_of_range.tolist() == [""] * 20 + ["above"] * 4

    kept, excluded = in_range_only(slices)
    assert kept.slice_index.tolist() == list(range(20)) and kept.in_range.all()
    assert (excluded.slices, excluded.excluded, excluded.excluded_anomalous) == (24, 4, 1)
    assert excluded.by_reason == {"above": 4} and excluded.key_parts() == [f"gate-{excluded.digest}"]
    assert "4 of 24 test slices out of the model's range (4 above; 1 anomalous)" in excluded.line("test")
    # By index nothing lies above the phantom's range: the set and its cache names are as before the gate.
    unchanged, none = in_range_only(_gated_volume(tiny_phantom, BY_INDEX))
    assert len(unchanged) == 24 and none.excluded == 0 and none.key_parts() == []


def test_slice_sets_keep_the_gate_through_subsets_concatenation_and_their_files(
    tmp_path, tiny_phantom, monkeypatch
):
    monkeypatch.setattr(placement, "estimate_slices", lambda *args: ABOVE)
    model = AnomalyModel.create(TINY, seed=0)
    model.position_regressor = PositionRegressor(RegressorConfig(resolution=16, channels=(4, 8))).eval()
    slices = _gated_volume(tiny_phantom, SlicePlacer.for_model(model))
    both = concatenate([slices.subset(np.arange(18, 24)), slices.subset(np.arange(2))])
    assert both.in_range.tolist() == [True, True, False, False, False, False, True, True]
    both.save(tmp_path / "set.npz")
    np.testing.assert_array_equal(SliceSet.load(tmp_path / "set.npz").out_of_range, both.out_of_range)
    # A file written before the gate existed reads as all in range.
    with np.load(tmp_path / "set.npz") as data:
        np.savez(tmp_path / "old.npz", **{k: data[k] for k in data.files if k != "out_of_range"})
    assert SliceSet.load(tmp_path / "old.npz").in_range.all()


def test_the_phantom_tracks_keep_only_in_range_slices_and_record_how_many_went(
    tmp_path, tiny_phantom, model_with_regressor, monkeypatch, capsys
):
    monkeypatch.setattr(placement, "estimate_slices", lambda *args: ABOVE)
    placer = SlicePlacer.for_model(model_with_regressor)
    volume = _gated_volume(tiny_phantom, placer)
    monkeypatch.setattr(phantom_track, "phantom_split", lambda *args: (volume, volume))
    args = argparse.Namespace(train_cases=1, per_type=1, normal_cases=1, stride=2, resolution=32)
    data = phantom_track.phantom_data(args, HUWindow(), placer)
    assert data.train.in_range.all() and data.test.in_range.all()
    assert data.test.slice_index.tolist() == list(range(0, 20, 2))  # every 2nd, none of 20-23
    assert (data.exclusions["train"].excluded, data.exclusions["test"].excluded) == (4, 2)
    assert "gate-" in data.data_key  # a cached run of the ungated slices is never read for these

    path = AnomalyModel.create(TINY, seed=0).save(tmp_path / "model.safetensors")
    track = TrackStart("phantom", argparse.Namespace(threads=1, model=path, position="auto"), [])
    track.record_gate(data.exclusions)
    assert track.header()["position"]["range_gate"]["test"]["excluded"] == 2
    assert "[phantom] range gate: 2 of 12 test slices out of the model's range" in capsys.readouterr().out
    nothing = in_range_only(volume.subset(np.arange(20, 24)))[1]
    with pytest.raises(SystemExit, match=r"no test slice lies in the model's range \({'above': 4}\)"):
        track.record_gate({"test": nothing})
