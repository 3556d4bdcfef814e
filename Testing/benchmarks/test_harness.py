"""The benchmark harness: data structure, baselines, metrics plumbing, report (no thresholds on results)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from AnomalyScoutLib.commands.calibrate import DEFAULT_PHANTOM_SEED
from AnomalyScoutLib.preprocessing import HUWindow
from benchmarks.baselines.atlas import PositionAtlas
from benchmarks.baselines.autoencoder import AutoencoderDetector
from benchmarks.data import LIVER_LABEL, PhantomSplit, volume_slices
from benchmarks.detectors import Detection
from benchmarks.evaluate import MethodRun, case_scores, detection_metrics
from benchmarks.model_selection import validation_cases
from benchmarks.phantom_track import balanced_subset
from benchmarks.real_anatomy import insert_real_anomaly, surrogate_anatomy
from benchmarks.report import fill
from benchmarks.slices import CaseInfo, SliceSet, concatenate

torch.set_num_threads(1)


def _toy_set(n_cases: int = 3, n: int = 8, size: int = 16, seed: int = 0, anomalous: tuple = ()) -> SliceSet:
    """Cases of ``n`` noisy slices; cases listed in ``anomalous`` get a bright square on slices 2..4."""
    rng = np.random.default_rng(seed)
    parts = []
    for c in range(n_cases):
        images = rng.normal(0.0, 0.05, (n, size, size)).astype(np.float32)
        truth = np.zeros(images.shape, dtype=bool)
        kind = "normal"
        if c in anomalous:
            kind = "blob"
            truth[2:5, 5:9, 5:9] = True
            images[truth] += 0.8
        parts.append(
            SliceSet(
                images,
                ((np.arange(n) + 0.5) / n).astype(np.float32),
                np.ones(images.shape, bool),
                truth,
                np.zeros(images.shape, bool),
                np.zeros(n, np.int64),
                np.arange(n),
                (CaseInfo(f"{kind}-{c}", kind, c),),
            )
        )
    return concatenate(parts)


def test_a_slice_set_survives_a_round_trip_through_its_file(tmp_path):
    slices = _toy_set(anomalous=(1,))
    slices.save(tmp_path / "set.npz")
    loaded = SliceSet.load(tmp_path / "set.npz")
    assert loaded.cases == slices.cases
    np.testing.assert_array_equal(loaded.images, slices.images)
    np.testing.assert_array_equal(loaded.labels, slices.labels)


def test_a_subset_renumbers_the_cases_it_still_uses():
    slices = _toy_set(n_cases=3)
    sub = slices.subset(slices.case == 2)
    assert [c.name for c in sub.cases] == ["normal-2"]
    assert set(sub.case.tolist()) == {0}


def test_slice_sets_refuse_arrays_of_different_lengths():
    slices = _toy_set(n_cases=1)
    with pytest.raises(ValueError, match="positions"):
        SliceSet(
            slices.images,
            slices.positions[:-1],
            slices.body,
            slices.anomaly,
            slices.organ,
            slices.case,
            slices.slice_index,
            slices.cases,
        )


def test_the_atlas_scores_a_bright_square_above_normal_slices():
    train, test = _toy_set(n_cases=4, seed=1), _toy_set(n_cases=2, seed=2, anomalous=(1,))
    atlas = PositionAtlas(bins=4, bandwidth=0.2)
    atlas.fit(train)
    detection = atlas.detect(test)
    assert detection.slice_scores[test.labels].min() > detection.slice_scores[~test.labels].max()


def test_the_autoencoder_learns_to_reconstruct_its_training_slices():
    train = _toy_set(n_cases=2, seed=3)
    autoencoder = AutoencoderDetector(steps=30, batch_size=8, width=4)
    autoencoder.fit(train)
    assert np.mean(autoencoder.losses[-5:]) < np.mean(autoencoder.losses[:5])
    assert autoencoder.detect(train).maps.shape == train.images.shape


def test_metrics_reward_a_perfect_detector_and_not_a_blind_one():
    slices = _toy_set(n_cases=3, anomalous=(0, 1))
    perfect = Detection(slices.anomaly.astype(np.float32), slices.labels.astype(float))
    blind = Detection(np.zeros(slices.images.shape, np.float32), np.zeros(len(slices)))
    good, bad = detection_metrics(slices, perfect), detection_metrics(slices, blind)
    assert good["overall"]["slice_auroc"] == 1.0 and good["blob"]["pixel_ap"] == 1.0
    assert good["overall"]["best_dice"] == 1.0
    assert bad["overall"]["slice_auroc"] == 0.5 and bad["overall"]["pixel_ap"] < 0.1


def test_methods_without_maps_report_no_pixel_metrics():
    slices = _toy_set(n_cases=2, anomalous=(0,))
    result = detection_metrics(slices, Detection(None, slices.labels.astype(float)))
    assert result["overall"]["pixel_ap"] is None and result["overall"]["slice_auroc"] == 1.0


def test_a_case_scores_as_its_most_anomalous_slice():
    slices = _toy_set(n_cases=2)
    scores = np.arange(len(slices), dtype=float)
    np.testing.assert_array_equal(case_scores(slices, scores), [7.0, 15.0])


def test_a_cached_run_reads_back_what_was_written(tmp_path):
    slices = _toy_set(n_cases=1)
    run = MethodRun("m", Detection(slices.images, np.arange(8.0)), 1.5, 2.5)
    run.save(tmp_path / "run.npz")
    loaded = MethodRun.load("m", tmp_path / "run.npz")
    assert (loaded.fit_seconds, loaded.detect_seconds) == (1.5, 2.5)
    np.testing.assert_allclose(loaded.detection.maps, slices.images, atol=1e-3)


def test_the_balanced_subset_takes_each_type_and_normal_slices_as_asked():
    slices = _toy_set(n_cases=4, anomalous=(0, 1))
    chosen = slices.subset(balanced_subset(slices, per_type=3, n_normal=5, seed=0))
    assert int(chosen.labels.sum()) == 3 and int((~chosen.labels).sum()) == 5


def test_volume_slices_put_a_phantom_case_on_the_model_grid(tiny_anomalous_phantom):
    case = tiny_anomalous_phantom
    spacing = case.volume.spacing_xyz
    slices = volume_slices(
        case.volume.array_zyx,
        (spacing[2], spacing[1], spacing[0]),
        case.anomaly_mask > 0,
        case.labels == LIVER_LABEL,
        CaseInfo("t", "tumour", 0),
        32,
        HUWindow(),
    )
    assert slices.images.shape == (case.volume.array_zyx.shape[0], 32, 32)
    assert slices.labels.tolist() == case.slice_labels.tolist()
    assert slices.images.min() >= -1.0 and slices.images.max() <= 1.0


def test_a_lesion_inserted_into_real_anatomy_stays_inside_the_liver(tiny_phantom):
    case = tiny_phantom
    spacing = case.volume.spacing_xyz
    liver = case.labels == LIVER_LABEL
    hu = case.volume.array_zyx.copy()
    anatomy = surrogate_anatomy(hu, (spacing[2], spacing[1], spacing[0]), liver)
    _, changed = insert_real_anomaly("tumour", hu, anatomy, seed=1, noise_hu=10.0)
    assert changed.any() and not (changed & ~liver).any()


def test_the_report_replaces_only_its_generated_blocks():
    text = "intro\n<!-- generated:real -->\nold numbers\n<!-- /generated:real -->\nprose\n"
    filled = fill(text)
    assert filled.startswith("intro\n") and filled.endswith("prose\n") and "old numbers" not in filled


def test_model_selection_validates_on_phantoms_no_other_part_uses():
    cases = validation_cases(per_type=3, n_normal=4)
    seeds = [seed for seed, _ in cases]
    assert len(set(seeds)) == len(seeds) == 5 * 3 + 4
    assert {kind for _, kind in cases} == {"tumour", "metal", "ascites", "blob", "deformation", "normal"}
    split = PhantomSplit(n_train=14, per_type=10, n_normal=10)  # the shipped model's training seeds and more
    used = set(split.train_seeds) | {seed for seed, _ in split.test_cases}
    assert not used & set(seeds) and min(seeds) < DEFAULT_PHANTOM_SEED


def test_a_method_runs_subset_keeps_its_slices_per_second():
    run = MethodRun("m", Detection(None, np.arange(10.0)), fit_seconds=3.0, detect_seconds=5.0)
    part = run.subset(np.arange(10) < 4)
    assert list(part.detection.slice_scores) == [0.0, 1.0, 2.0, 3.0]
    assert part.slices_per_second == pytest.approx(run.slices_per_second) and part.fit_seconds == 3.0


def test_a_method_summary_holds_each_types_slice_auroc_and_their_mean():
    from benchmarks.detectors import Detection
    from benchmarks.phantom_track import method_summary
    from benchmarks.slices import CaseInfo, SliceSet

    n = 6
    anomaly = np.zeros((n, 4, 4), dtype=bool)
    anomaly[[0, 3], 1, 1] = True  # one anomalous slice in each anomalous case
    slices = SliceSet(
        images=np.zeros((n, 4, 4), dtype=np.float32),
        positions=np.full(n, 0.5, dtype=np.float32),
        body=np.ones((n, 4, 4), dtype=bool),
        anomaly=anomaly,
        organ=np.zeros((n, 4, 4), dtype=bool),
        case=np.array([0, 0, 1, 1, 2, 2]),
        slice_index=np.array([0, 1, 0, 1, 0, 1]),
        cases=(
            CaseInfo("tumour-1", "tumour", 1),
            CaseInfo("blob-2", "blob", 2),
            CaseInfo("normal-3", "normal", 3),
        ),
    )
    # tumour's anomalous slice scores top (AUROC 1); blob's lowest (AUROC 0)
    scores = np.array([5.0, 1.0, 4.0, 1.0, 2.0, 3.0])
    row = method_summary("probe", slices, Detection(None, scores), "test")
    assert row["per_type"] == {"blob": 0.0, "tumour": 1.0}
    assert row["mean_type_auroc"] == 0.5 and row["worst_type_auroc"] == 0.0 and row["method"] == "probe"


def test_the_visible_contrast_is_the_windowed_change_inside_the_mask_against_the_twin():
    from benchmarks.visibility import case_contrast

    twin = _toy_set(n_cases=1, seed=3)
    case = _toy_set(n_cases=1, seed=3, anomalous=(0,))  # the same noise, plus 0.8 on a square of slices 2-4
    assert case_contrast(case, twin, hu_per_unit=300.0) == pytest.approx(0.8 * 300.0, rel=1e-5)
    # slices kept only every other one: the twin is found by slice index, not by row
    strided = case.subset(case.slice_index % 2 == 0)
    assert case_contrast(strided, twin, hu_per_unit=300.0) == pytest.approx(240.0, rel=1e-5)
    with pytest.raises(ValueError, match="no twin"):
        case_contrast(case, twin.subset(twin.slice_index != 3), hu_per_unit=300.0)
