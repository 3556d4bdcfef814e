"""Head training: losses, a short run that logs and keeps its best checkpoint, the model-file record."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors import safe_open

from AnomalyScoutLib.anomaly_map.data import NormalSlices, load_normal_slices
from AnomalyScoutLib.anomaly_map.head import AnomalyHead, HeadConfig
from AnomalyScoutLib.anomaly_map.training import (
    HeadTrainer,
    HeadTrainingOptions,
    focal_loss,
    soft_dice_loss,
)
from AnomalyScoutLib.cancellation import CancelFlag
from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.io.volume import write_volume
from AnomalyScoutLib.preprocessing import HUWindow

torch.set_num_threads(1)


def test_focal_loss_is_below_cross_entropy_and_vanishes_on_confident_right_answers():
    target = torch.tensor([[1.0, 0.0]])
    logits = torch.tensor([[0.3, -0.2]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert 0 < focal_loss(logits, target) < bce
    assert focal_loss(torch.tensor([[20.0, -20.0]]), target) < 1e-6


def test_soft_dice_loss_is_zero_for_a_perfect_map_and_ignores_normal_slices():
    target = torch.zeros(2, 4, 4)
    target[0, :2] = 1
    assert soft_dice_loss(target.clone(), target) == pytest.approx(0.0)
    assert soft_dice_loss(1 - target, target) > 0.9
    assert soft_dice_loss(torch.rand(1, 4, 4), torch.zeros(1, 4, 4)) == 0


def _normal_slices(tiny_phantom, volumes=3):
    window = HUWindow()
    hu = torch.from_numpy(tiny_phantom.volume.array_zyx[4:20].astype("float32"))
    images = torch.nn.functional.avg_pool2d(window.normalize(hu)[:, None], 2)[:, 0]  # 32 x 32
    n = len(images)
    return NormalSlices(
        images=images,
        positions=torch.linspace(0.2, 0.8, n),
        body=images > -0.95,
        volume=torch.arange(n) % volumes,
    )


def _short_run(tiny_phantom, run_folder, **options) -> HeadTrainer:
    """Four steps of batch 4, validated every 2, on a reconstruction that halves the slice."""
    train, validation = _normal_slices(tiny_phantom).split(1)
    return HeadTrainer(
        AnomalyHead(HeadConfig(channels=(4, 8))),
        train,
        validation,
        lambda images, positions, body: images * 0.5,
        HeadTrainingOptions(steps=4, batch=4, validation_slices=6, validate_every=2, **options),
        HUWindow(),
        torch.device("cpu"),
        run_folder=run_folder,
    )


def test_a_short_run_logs_each_validation_and_keeps_the_best_weights(tiny_phantom, tmp_path):
    trainer = _short_run(tiny_phantom, tmp_path, holdout="warp")
    assert trainer.train()
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 4]
    best = max(rows, key=lambda r: float(r["slice_auroc"]) + float(r["pixel_ap"]))
    with safe_open(str(tmp_path / "head_best.safetensors"), framework="pt") as handle:
        header = json.loads(handle.metadata()["anomalyscout_head"])
        stored = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    assert header["best"]["step"] == int(best["step"]) and header["options"]["holdout"] == "warp"
    for name, tensor in trainer.head.state_dict().items():
        assert torch.equal(stored[name], tensor)
    summary = trainer.summary()
    assert summary["steps_done"] == 4 and "warp" not in summary["training_families"]


def test_snapshots_keep_the_weights_of_every_validation_as_they_were(tiny_phantom, tmp_path):
    trainer = _short_run(tiny_phantom, tmp_path, snapshots=True)
    head = trainer.head
    seen: dict[int, dict[str, torch.Tensor]] = {}
    step = trainer.train_step

    def remembering_step() -> float:
        loss = step()
        seen[trainer.step] = {k: v.clone() for k, v in head.state_dict().items()}
        return loss

    trainer.train_step = remembering_step
    trainer.train()
    files = sorted((tmp_path / "snapshots").iterdir())
    assert [f.name for f in files] == ["step-000002.safetensors", "step-000004.safetensors"]
    with safe_open(str(files[0]), framework="pt") as handle:
        assert json.loads(handle.metadata()["anomalyscout_head"])["row"]["step"] == 2
        for name, tensor in seen[2].items():
            assert torch.equal(handle.get_tensor(name), tensor)
    assert not all(torch.equal(seen[2][k], seen[4][k]) for k in seen[2])


def test_a_cancelled_run_stops_before_its_first_step(tiny_phantom):
    train, validation = _normal_slices(tiny_phantom).split(1)
    flag = CancelFlag()
    flag.set()
    head = AnomalyHead(HeadConfig(channels=(4, 8), use_reconstruction=False))
    before = {k: v.clone() for k, v in head.state_dict().items()}
    trainer = HeadTrainer(
        head,
        train,
        validation,
        lambda *a: pytest.fail("a head without reconstruction must not reconstruct"),
        HeadTrainingOptions(steps=3, batch=2, validation_slices=4),
        HUWindow(),
        torch.device("cpu"),
    )
    assert not trainer.train(cancel=flag)
    assert trainer.step == 0
    assert all(torch.equal(before[k], v) for k, v in head.state_dict().items())


def test_options_refuse_an_unknown_holdout_family():
    with pytest.raises(ConfigError, match="holdout"):
        HeadTrainingOptions(holdout="tumour")


def test_normal_slices_keep_whole_volumes_apart_for_validation(tiny_phantom, tmp_path):
    for i in range(3):
        write_volume(tiny_phantom.volume, tmp_path / f"case_{i}.nrrd")
    data = load_normal_slices(sorted(tmp_path.glob("*.nrrd")), 32, HUWindow())
    assert data.images.shape[1:] == (32, 32) and data.body.any()
    assert sorted(torch.unique(data.volume).tolist()) == [0, 1, 2]
    train, validation = data.split(1)
    assert set(validation.volume.tolist()) == {2} and 2 not in set(train.volume.tolist())
    with pytest.raises(ConfigError, match="validation volumes"):
        data.split(3)
