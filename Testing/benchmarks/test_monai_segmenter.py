"""The MONAI segmenter's training loop: its learning-rate schedule, resuming, and that the checkpoint keeps
the weights of the best validation step (not the last step's under the best step's name)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmarks import monai_segmenter
from benchmarks.data import PhantomSplit
from benchmarks.monai_segmenter import SegmenterSpec, learning_rate, load_segmenter, train
from benchmarks.slices import CaseInfo, SliceSet

pytest.importorskip("monai")
torch.set_num_threads(1)


def test_learning_rate_warms_up_peaks_and_decays_to_two_percent():
    assert learning_rate(0, 1000, 1e-3, warmup=100) == pytest.approx(1e-5, rel=0.01)
    assert learning_rate(99, 10**6, 1e-3, warmup=100) == pytest.approx(1e-3, rel=1e-4)
    assert learning_rate(500, 1000, 1e-3, warmup=100) == pytest.approx(1e-3 * (0.02 + 0.49), rel=1e-6)
    assert learning_rate(1000, 1000, 1e-3) == pytest.approx(2e-5)
    assert learning_rate(5000, 1000, 1e-3) == pytest.approx(2e-5)  # past the end: stays at the floor
    after_warmup = [learning_rate(s, 1000, 1e-3, warmup=100) for s in range(99, 1001)]
    assert all(a >= b for a, b in zip(after_warmup, after_warmup[1:]))
    assert not any(math.isnan(r) for r in after_warmup)


def _tiny_slices(n: int = 8, res: int = 32) -> SliceSet:
    """Bright discs (the "liver") on a dark body, one synthetic case."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:res, :res]
    organ = np.stack([(yy - rng.integers(10, 22)) ** 2 + (xx - 16) ** 2 < 36 for _ in range(n)])
    images = np.where(organ, 0.5, -0.5).astype(np.float32)
    zeros = np.zeros((n, res, res), dtype=bool)
    return SliceSet(
        images=images,
        positions=np.linspace(0, 1, n, dtype=np.float32),
        body=np.ones((n, res, res), dtype=bool),
        anomaly=zeros,
        organ=organ,
        case=np.zeros(n, dtype=np.int64),
        slice_index=np.arange(n),
        cases=(CaseInfo("normal-0", "normal", 0),),
    )


@pytest.fixture
def tiny_spec(tmp_path, monkeypatch) -> SegmenterSpec:
    monkeypatch.setattr(monai_segmenter, "WORK_DIR", tmp_path)
    monkeypatch.setattr(SegmenterSpec, "slices", lambda self, seeds: _tiny_slices())
    return SegmenterSpec(resolution=32, channels=(4, 8), min_liver_px=1)


def test_training_stops_at_the_schedule_end_and_resumes_there(tiny_spec):
    logs: list[str] = []
    first = train(tiny_spec, minutes=5, steps=3, batch_size=4, val_every=1, log=logs.append)
    assert first["step"] == 3 and len(first["history"]) == 3 and tiny_spec.checkpoint.is_file()
    second = train(tiny_spec, minutes=5, steps=5, batch_size=4, val_every=1, log=logs.append)
    assert any("resumed at step 3" in line for line in logs)
    assert second["step"] == 5 and [h[0] for h in second["history"]] == [1, 2, 3, 4, 5]


def test_the_checkpoint_keeps_the_best_steps_weights(tiny_spec, monkeypatch):
    """Validation says step 1 was best; the loaded model must be the net as it was at step 1."""
    snapshots: list[dict[str, torch.Tensor]] = []

    def falling_dice(model, val, val_images, min_liver_px):  # noqa: ANN001, ARG001 - for _validation_dice
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return 1.0 / len(snapshots)

    monkeypatch.setattr(monai_segmenter, "_validation_dice", falling_dice)
    state = train(tiny_spec, minutes=5, steps=4, batch_size=4, lr=1e-2, val_every=1, log=lambda m: None)
    assert state["best_step"] == 1 and state["best_dice"] == 1.0
    model, summary = load_segmenter(tiny_spec)
    assert summary["best_step"] == 1 and summary["step"] == 4
    weights = model.state_dict()
    name = next(k for k, v in weights.items() if v.is_floating_point() and v.numel() > 1)
    torch.testing.assert_close(weights[name], snapshots[0][name])
    assert not torch.equal(snapshots[0][name], snapshots[-1][name])  # the net did move after step 1


def test_default_seeds_are_many_normal_phantoms_apart_from_every_test_seed():
    spec = SegmenterSpec()
    assert len(spec.train_seeds) == 24 and len(spec.val_seeds) == 2
    assert not set(spec.train_seeds) & set(spec.val_seeds)
    test_seeds = {seed for seed, _ in PhantomSplit(per_type=10, n_normal=10).test_cases}
    assert not (set(spec.train_seeds) | set(spec.val_seeds)) & test_seeds
    assert max(spec.train_seeds + spec.val_seeds) < 5000  # below every track's test and pool seeds


def test_changed_seeds_train_a_new_checkpoint():
    """The checkpoint's name hashes the spec, so a spec with other seeds never resumes the old weights."""
    spec = SegmenterSpec()
    fewer = SegmenterSpec(train_seeds=tuple(range(1000, 1006)), val_seeds=(1006,))
    other_val = SegmenterSpec(val_seeds=(1024,))
    assert len({spec.checkpoint, fewer.checkpoint, other_val.checkpoint}) == 3
    assert SegmenterSpec().checkpoint == spec.checkpoint
    with pytest.raises(ValueError, match="overlap"):
        SegmenterSpec(val_seeds=(1000,))


def test_neighbour_stacks_hold_each_slices_own_case_neighbours_and_replicate_at_the_ends():
    one, two = _tiny_slices(4), _tiny_slices(4)
    both = SliceSet(
        images=np.concatenate([one.images, two.images + 10.0]),  # case 1 is told apart by its values
        positions=np.concatenate([one.positions, two.positions]),
        body=np.concatenate([one.body, two.body]),
        anomaly=np.concatenate([one.anomaly, two.anomaly]),
        organ=np.concatenate([one.organ, two.organ]),
        case=np.repeat([0, 1], 4),
        slice_index=np.tile(np.arange(4), 2),
        cases=(CaseInfo("normal-0", "normal", 0), CaseInfo("normal-1", "normal", 1)),
    )
    stack = monai_segmenter.neighbour_stack(both, 1)
    assert stack.shape == (8, 3, 32, 32)
    np.testing.assert_array_equal(stack[:, 1], both.images)  # the slice itself in the middle
    np.testing.assert_array_equal(stack[1, 0], both.images[0])
    np.testing.assert_array_equal(stack[1, 2], both.images[2])
    np.testing.assert_array_equal(stack[0, 0], both.images[0])  # first slice: itself below
    np.testing.assert_array_equal(stack[3, 2], both.images[3])  # last of case 0 does not reach case 1
    np.testing.assert_array_equal(stack[4, 0], both.images[4])
    # Every other slice, stacked from the unstrided source: the true neighbours, not the strided ones.
    strided = both.subset(both.slice_index % 2 == 1)
    from_source = monai_segmenter.neighbour_stack(strided, 1, both)
    np.testing.assert_array_equal(from_source[0], both.images[[0, 1, 2]])
    with pytest.raises(ValueError, match="not in the source"):
        monai_segmenter.neighbour_stack(both, 1, strided)


def test_a_2_5_d_segmenter_trains_on_three_slice_stacks_and_has_its_own_checkpoint(tiny_spec):
    flat = SegmenterSpec(resolution=32, channels=(4, 8), min_liver_px=1)
    stacked = SegmenterSpec(resolution=32, channels=(4, 8), min_liver_px=1, context=1)
    assert stacked.checkpoint != flat.checkpoint and "context" not in flat.as_dict()
    train(stacked, minutes=5, steps=2, batch_size=4, val_every=1, log=lambda m: None)
    model, _ = load_segmenter(stacked)
    images = monai_segmenter.segmenter_images(stacked, _tiny_slices())
    assert images.shape == (8, 3, 32, 32)
    assert monai_segmenter.predict_liver(model, images).shape == (8, 32, 32)


def test_a_new_run_starts_from_the_init_checkpoints_best_weights(tiny_spec):
    train(tiny_spec, minutes=5, steps=2, batch_size=4, val_every=1, log=lambda m: None)
    best, _ = load_segmenter(tiny_spec)
    finer = SegmenterSpec(resolution=32, channels=(4, 8), min_liver_px=2)  # another checkpoint
    train(finer, minutes=5, steps=0, batch_size=4, log=lambda m: None, init=tiny_spec.checkpoint)
    started, _ = load_segmenter(finer)
    for name, value in best.state_dict().items():
        torch.testing.assert_close(started.state_dict()[name], value, msg=name)
    fresh = SegmenterSpec(resolution=32, channels=(4, 8), min_liver_px=3)
    train(fresh, minutes=5, steps=0, batch_size=4, log=lambda m: None)
    weights = load_segmenter(fresh)[0].state_dict()
    assert any(not torch.equal(weights[n], v) for n, v in best.state_dict().items() if v.is_floating_point())


class _Threshold(torch.nn.Module):
    """A "segmenter" that calls every bright pixel liver: its masks are the inputs' organ exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, x.shape[1] // 2 : x.shape[1] // 2 + 1]


def test_a_finer_segmenters_masks_reach_the_model_grid_by_area_in_the_slices_order():
    native = _tiny_slices(n=6, res=32)
    coarse_organ = native.organ.reshape(6, 16, 2, 16, 2).mean(axis=(2, 4)) >= 0.5
    model_grid = SliceSet(
        images=np.zeros((6, 16, 16), np.float32),
        positions=native.positions,
        body=np.ones((6, 16, 16), bool),
        anomaly=np.zeros((6, 16, 16), bool),
        organ=coarse_organ,
        case=native.case,
        slice_index=native.slice_index,
        cases=native.cases,
    )
    picked = model_grid.subset(np.array([4, 1, 3]))  # another order, and not every slice
    spec = SegmenterSpec(resolution=32, channels=(4, 8), min_liver_px=1, context=1)
    result = monai_segmenter.segment_on_model_grid(_Threshold(), spec, picked, native)
    np.testing.assert_array_equal(result.native, native.organ[[4, 1, 3]])
    np.testing.assert_array_equal(result.native_truth, native.organ[[4, 1, 3]])
    np.testing.assert_array_equal(result.model_grid, coarse_organ[[4, 1, 3]])
    assert result.model_grid.shape == (3, 16, 16)
    with pytest.raises(ValueError, match="not a multiple"):
        monai_segmenter.segment_on_model_grid(_Threshold(), SegmenterSpec(resolution=24), picked, native)
    with pytest.raises(ValueError, match="not in the native set"):
        without_one = native.subset(native.slice_index != 1)
        monai_segmenter.segment_on_model_grid(_Threshold(), spec, picked, without_one)
