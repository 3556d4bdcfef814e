"""The GAN training loop: it learns, resumes bit-exactly, stops cleanly, and runs as 2 DDP processes."""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY

from AnomalyScoutLib.cancellation import CancelFlag
from AnomalyScoutLib.cli import main
from AnomalyScoutLib.nets.architecture import ArchitectureConfig
from AnomalyScoutLib.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from AnomalyScoutLib.train.data import SliceSet
from AnomalyScoutLib.train.gan import GanOptions, GanTrainer

REPO = Path(__file__).resolve().parents[3]
MICRO = ArchitectureConfig(8, (16, 16), z_dim=8, w_dim=8, mapping_layers=2)


def _disk_data(resolution: int = 8) -> SliceSet:
    """Every slice the same bright disk on air: a target a few dozen steps can learn."""
    grid = torch.linspace(-1, 1, resolution)
    disk = ((grid[None, :] ** 2 + grid[:, None] ** 2) < 0.5).float() * 1.6 - 0.8
    return SliceSet(disk.expand(32, 1, resolution, resolution).half(), torch.linspace(0.01, 0.99, 32))


def _trainer(tmp_path: Path, config: ArchitectureConfig = MICRO, **options) -> GanTrainer:
    data = _disk_data(config.resolution)
    defaults = {"batch": 8, "augment": "none", "kimg": 1.0, "ema_kimg": 0.05}
    return GanTrainer(config, GanOptions(**{**defaults, **options}), data, tmp_path, torch.device("cpu"))


def test_a_few_steps_on_a_learnable_target_lower_the_losses(tmp_path):
    trainer = _trainer(tmp_path, lr=0.01, seed=3)
    target = trainer.data.images[0].float()
    z = torch.randn(64, MICRO.z_dim, generator=torch.Generator().manual_seed(0))

    def distance() -> float:
        with torch.no_grad():
            samples = trainer.generator(z, torch.rand(64), noise_mode="const")
        return (samples - target).square().mean().item()

    before = distance()
    losses = [trainer.train_step() for _ in range(60)]
    assert distance() < 0.5 * before
    # D's loss falls as it learns to tell the disk from early samples (medians: GAN losses oscillate).
    d_losses = [s["loss_d"] for s in losses]
    assert statistics.median(d_losses[-20:]) < statistics.median(d_losses[:5]) - 0.3


def test_a_resumed_run_continues_bit_exactly_like_an_uninterrupted_one(tmp_path):
    straight = _trainer(tmp_path / "a", augment="translation,cutout,color", r1_interval=2)
    (tmp_path / "a").mkdir()
    for _ in range(6):
        straight.train_step()

    (tmp_path / "b").mkdir()
    first = _trainer(tmp_path / "b", augment="translation,cutout,color", r1_interval=2)
    for _ in range(3):
        first.train_step()
    first.save()
    torch.manual_seed(12345)  # disturb the global RNG: resume must restore it
    resumed = _trainer(tmp_path / "b", augment="translation,cutout,color", r1_interval=2)
    resumed.resume()
    for _ in range(3):
        resumed.train_step()

    assert resumed.step == straight.step == 6
    for module in ("generator", "generator_ema", "discriminator"):
        a, b = getattr(straight, module).state_dict(), getattr(resumed, module).state_dict()
        for name in a:
            assert torch.equal(a[name], b[name]), f"{module}.{name}"
    for name, value in straight.opt_d.state_dict()["state"][0].items():
        assert torch.equal(value, resumed.opt_d.state_dict()["state"][0][name])


def test_a_cancelled_run_writes_a_checkpoint_and_reports_it(tmp_path):
    trainer = _trainer(tmp_path)
    flag = CancelFlag()
    flag.set()
    assert trainer.train(flag, progress=False) is False
    checkpoint = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert checkpoint.state["step"] == 0 and "G_ema.synthesis.const" in checkpoint.tensors


def test_the_commands_train_resume_and_write_a_loadable_model(tmp_path, volume_folder, tiny_config_file):
    from AnomalyScoutLib.model_file import AnomalyModel

    run = tmp_path / "run"
    common = ["--device", "cpu", "--threads", "1", "--no-progress"]
    args = ["train-gan", "--data", str(volume_folder), "--res", "16", "--config", str(tiny_config_file)]
    assert (
        main(
            [*args, "--out", str(run), "--kimg", "0.032", "--batch", "8", "--sample-every", "0.016", *common]
        )
        == 0
    )
    with open(run / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert float(rows[-1]["images_seen"]) > 0 and float(rows[-1]["images_per_s"]) > 0
    assert (run / "samples" / "latest.png").is_file() and len(list((run / "samples").glob("kimg*.png"))) >= 1
    options = json.loads((run / "training_options.json").read_text())
    assert options["architecture"] == TINY.to_dict() and options["data"]["volumes"] == 2

    assert main(["train-gan", "--out", str(run), "--resume", "--kimg", "0.048", *common]) == 0
    assert load_checkpoint(run / CHECKPOINT_NAME).state["images_seen"] == 48

    model_path = tmp_path / "model.safetensors"
    assert (
        main(["train-encoder", "--gan", str(run), "--out", str(model_path), "--kimg", "0.032", *common]) == 0
    )
    model = AnomalyModel.load(model_path)
    assert model.resolution == 16 and model.metadata["training"]["gan"]["kimg"] == 0.048
    assert model.metadata["training"]["encoder"]["iterations"] == 2

    # Warm start: the new file's encoder starts from the old one's weights (not a fresh initialisation).
    warm_path = tmp_path / "warm.safetensors"
    assert (
        main(["train-encoder", "--gan", str(run), "--out", str(warm_path), "--kimg", "0.008",
              "--init", str(model_path), "--lr", "1e-12", *common])
        == 0
    )  # fmt: skip
    warm = AnomalyModel.load(warm_path)
    assert warm.metadata["training"]["encoder"]["initialised_from"] == model.model_id
    for name, tensor in model.encoder.state_dict().items():
        if name != "mean_w_table":
            torch.testing.assert_close(warm.encoder.state_dict()[name], tensor, atol=1e-3, rtol=1e-3)

    # The same warm start with a narrowed code space: the written encoder is the trained one, constrained.
    narrow_path = tmp_path / "narrow.safetensors"
    assert (
        main(["train-encoder", "--gan", str(run), "--out", str(narrow_path), "--kimg", "0.008",
              "--init", str(model_path), "--lr", "1e-12", "--offset-scale", "0.5", "--single-w", *common])
        == 0
    )  # fmt: skip
    narrow = AnomalyModel.load(narrow_path)
    assert narrow.metadata["training"]["encoder"]["code_space"] == {"offset_scale": 0.5, "single_w": True}
    warm.encoder.constrain(0.5, single_w=True)
    for name in ("out.weight", "out.bias"):
        torch.testing.assert_close(
            narrow.encoder.state_dict()[name], warm.encoder.state_dict()[name], atol=1e-3, rtol=1e-3
        )


def test_train_encoder_refuses_an_init_model_of_another_architecture(tiny_model_file):
    from AnomalyScoutLib.errors import ConfigError
    from AnomalyScoutLib.model_file import AnomalyModel
    from AnomalyScoutLib.train.encoder import warm_start_encoder

    other = AnomalyModel.create(ArchitectureConfig(16, (8, 8, 8), z_dim=8, w_dim=8, mapping_layers=1))
    with pytest.raises(ConfigError, match="--init .* architecture"):
        warm_start_encoder(other, tiny_model_file)


def test_two_ddp_processes_on_cpu_train_and_checkpoint(tmp_path, volume_folder, tiny_config_file):
    run = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "AnomalyScoutLib", "train-gan", "--data", str(volume_folder), "--res", "16",
        "--config", str(tiny_config_file), "--out", str(run), "--kimg", "0.016", "--batch", "8",
        "--device", "cpu", "--threads", "1", "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    state = load_checkpoint(run / CHECKPOINT_NAME).state
    assert state["step"] == 2 and state["images_seen"] == 16
    assert json.loads((run / "training_options.json").read_text())["options"]["batch"] == 8


def test_path_length_regularisation_updates_its_running_mean(tmp_path):
    trainer = _trainer(tmp_path, pl_weight=2.0, pl_interval=1)
    assert trainer.mean_path_length.item() == 0.0
    for _ in range(2):
        trainer.train_step()
    assert trainer.mean_path_length.item() > 0.0


@pytest.mark.parametrize("generator_lr", [0.0, 0.01])
def test_encoder_training_tunes_the_synthesis_network_only_when_asked(generator_lr):
    """--generator-lr trains G's synthesis network with the encoder on the reconstruction loss; the mapping
    network (whose mean latents anchor the encoder) and the discriminator never move."""
    from AnomalyScoutLib.model_file import AnomalyModel
    from AnomalyScoutLib.train.encoder import EncoderOptions, EncoderTrainer

    torch.manual_seed(0)
    model = AnomalyModel.create(MICRO)
    before = {name: t.clone() for name, t in model.state_tensors().items()}
    options = EncoderOptions(kimg=0.04, batch=8, generator_lr=generator_lr)
    trainer = EncoderTrainer(model, options, _disk_data(), torch.device("cpu"))
    for _ in range(3):
        trainer.train_step()
    after = model.state_tensors()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert any(name.startswith("encoder.") for name in changed)
    synthesis = {name for name in changed if name.startswith("generator.synthesis.")}
    assert bool(synthesis) == (generator_lr > 0)
    assert not any(name.startswith(("generator.mapping.", "discriminator.")) for name in changed)


def test_bf16_precision_runs_the_passes_in_bfloat16_and_keeps_r1_in_float32(tmp_path, monkeypatch):
    from AnomalyScoutLib.train import gan as gan_module

    seen: dict[str, list[torch.dtype]] = {"r1": [], "d": []}
    real_r1 = gan_module.r1_penalty

    def spy_r1(logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        seen["r1"].append(logits.dtype)
        return real_r1(logits, images)

    monkeypatch.setattr(gan_module, "r1_penalty", spy_r1)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)  # no warning here
    trainer = _trainer(tmp_path, precision="bf16", r1_interval=1)
    trainer.discriminator.register_forward_hook(lambda m, i, out: seen["d"].append(out.dtype))
    stats = trainer.train_step()
    # Autocast ran D's plain passes in bf16; the R1 pass (last D call) stayed fp32, and so did its penalty.
    assert torch.bfloat16 in seen["d"] and seen["d"][-2] == torch.float32
    assert seen["r1"] == [torch.float32] and all(map(math.isfinite, stats.values()))


@pytest.mark.parametrize(("precision", "device", "expected"), [
    ("fp32", "cuda", None), ("bf16", "cpu", torch.bfloat16), ("auto", "cpu", None),
    ("auto", "cuda", torch.bfloat16),
])  # fmt: skip
def test_the_precision_option_picks_the_autocast_dtype(precision, device, expected):
    from AnomalyScoutLib.train.gan import autocast_dtype

    assert autocast_dtype(precision, torch.device(device)) == expected


def test_bf16_on_a_cpu_without_bf16_units_warns_that_it_is_emulated(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.warns(UserWarning, match="emulated"):
        _trainer(tmp_path, precision="bf16")


def test_an_unknown_precision_is_refused_with_its_name():
    from AnomalyScoutLib.errors import ConfigError

    with pytest.raises(ConfigError, match="fp16"):
        GanOptions(precision="fp16")


def test_compile_wraps_the_per_step_passes_and_keeps_the_modules_eager(tmp_path, monkeypatch):
    from AnomalyScoutLib.train import gan as gan_module

    wrapped = []
    monkeypatch.setattr(
        gan_module, "compile_or_eager", lambda module: wrapped.append(module) or (lambda *a: module(*a))
    )
    trainer = _trainer(tmp_path, compile=True)
    assert wrapped == [trainer.generator, trainer.discriminator]
    assert (
        trainer._generator_pass is not trainer.generator
        and trainer._discriminator_pass is not trainer.discriminator
    )
    trainer.train_step()  # the wrapped passes are the ones the step calls
    assert _trainer(tmp_path, compile=False)._generator_pass is not None and len(wrapped) == 2


def test_a_failing_compiler_falls_back_to_eager_with_a_warning(monkeypatch):
    from AnomalyScoutLib.train.gan import compile_or_eager

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", broken)
    module = torch.nn.Linear(2, 2)
    with pytest.warns(UserWarning, match="no C.. compiler"):
        assert compile_or_eager(module) is module
