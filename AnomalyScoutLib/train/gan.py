"""The GAN training loop: non-saturating logistic loss, lazy R1, optional path length, EMA, DiffAugment.

A run directory holds everything about one run::

    training_options.json   the resolved options and architecture (written once, checked on resume)
    log.csv                 one row per log interval: losses, images seen, images/s
    samples/kimgNNNNNN.png  EMA-generator samples, one row per slice position 0.1/0.3/0.5/0.7/0.9
    checkpoint.safetensors  networks, optimisers, RNG states (see :mod:`AnomalyScoutLib.train.checkpoint`)

Only the main process (rank 0) writes; the others train on their own data shard and average gradients.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from AnomalyScoutLib.cancellation import CancelFlag
from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.nets.architecture import ArchitectureConfig
from AnomalyScoutLib.nets.discriminator import Discriminator
from AnomalyScoutLib.nets.generator import Generator
from AnomalyScoutLib.train.augment import diff_augment, parse_policy
from AnomalyScoutLib.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from AnomalyScoutLib.train.data import SliceSet
from AnomalyScoutLib.train.ddp import Distributed, average_gradients, broadcast_parameters
from AnomalyScoutLib.train.losses import (
    d_logistic_loss,
    g_nonsaturating_loss,
    path_length_penalty,
    r1_penalty,
)
from AnomalyScoutLib.train.samples import write_sample_grid

__all__ = ["PRECISIONS", "GanOptions", "GanTrainer", "autocast_dtype"]

#: Training precisions: ``auto`` keeps the old behaviour (bf16 on CUDA, fp32 elsewhere).
PRECISIONS = ("auto", "fp32", "bf16")

LOG_FIELDS = (
    "step",
    "kimg",
    "images_seen",
    "wall_s",
    "images_per_s",
    "loss_d",
    "loss_g",
    "r1",
    "d_real",
    "d_fake",
)


@dataclass(frozen=True)
class GanOptions:
    """Hyper-parameters of one GAN run (stored in ``training_options.json``).

    Attributes:
        kimg: length of the run in thousands of real images shown to D.
        batch: total batch over all processes.
        lr: Adam learning rate of G and D (StyleGAN2: 0.002, betas 0 / 0.99).
        r1_gamma: R1 weight; ``r1_interval``: lazy regularisation period in steps.
        pl_weight: path-length weight (0 = off; it costs a second backward every ``pl_interval`` steps).
        ema_kimg: half-life of the generator EMA in thousands of images.
        augment: DiffAugment policy (``"color,translation,cutout"`` or ``"none"``).
        sample_every_kimg / checkpoint_every_s: how often samples and checkpoints are written.
        log_every: steps between log rows.
        seed: seeds initialisation, data order and noise.
        precision: ``"fp32"``, or ``"bf16"`` autocast for the D and G forward passes (CUDA, and CPUs with
            bf16 units); R1, path length and the losses stay fp32. ``"auto"``: bf16 on CUDA, fp32 elsewhere.
        compile: ``torch.compile`` the plain G and D passes (not R1: a compiled graph has no double
            backward); any compiler failure falls back to eager execution with a warning.
    """

    kimg: float = 50.0
    batch: int = 16
    lr: float = 0.002
    r1_gamma: float = 1.0
    r1_interval: int = 16
    pl_weight: float = 0.0
    pl_interval: int = 4
    ema_kimg: float = 2.0
    augment: str = "color,translation,cutout"
    sample_every_kimg: float = 2.0
    checkpoint_every_s: float = 180.0
    log_every: int = 10
    seed: int = 0
    precision: str = "auto"
    compile: bool = False

    def __post_init__(self) -> None:
        if self.kimg <= 0 or self.batch < 1 or self.lr <= 0:
            raise ConfigError(
                f"kimg, batch and lr must be positive, got {self.kimg}, {self.batch}, {self.lr}"
            )
        if self.r1_interval < 1 or self.pl_interval < 1 or self.log_every < 1:
            raise ConfigError("r1_interval, pl_interval and log_every must be >= 1")
        parse_policy(self.augment)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision option on a device (None: full fp32)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def compile_or_eager(module: torch.nn.Module) -> Any:
    """``torch.compile(module)``, falling back to eager execution if the compiler fails (no C++ compiler,
    an unsupported operator): training must never stop because an optimisation is unavailable."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    try:
        return torch.compile(module, dynamic=False)
    except Exception as error:  # noqa: BLE001 - any compiler set-up failure means: run eager
        warnings.warn(f"torch.compile unavailable ({error}); training runs eager", stacklevel=2)
        return module


class GanTrainer:
    """Owns the networks, optimisers and counters of one run; :meth:`train` runs until ``kimg`` or cancel."""

    def __init__(
        self,
        architecture: ArchitectureConfig,
        options: GanOptions,
        data: SliceSet,
        run_dir: Path,
        device: torch.device,
        dist_info: Distributed | None = None,
    ) -> None:
        self.architecture, self.options, self.data = architecture, options, data
        self.run_dir, self.device = Path(run_dir), device
        self.dist = dist_info or Distributed()
        if options.batch % self.dist.world_size:
            raise ConfigError(
                f"--batch {options.batch} must be divisible by the {self.dist.world_size} processes"
            )
        self.batch_per_process = options.batch // self.dist.world_size
        self.policy = parse_policy(options.augment)
        torch.manual_seed(options.seed)
        self.generator = Generator(architecture).to(device)
        self.discriminator = Discriminator(architecture).to(device)
        broadcast_parameters(self.generator, self.dist)
        broadcast_parameters(self.discriminator, self.dist)
        self.generator_ema = copy.deepcopy(self.generator).eval().requires_grad_(False)
        # Lazy regularisation: the regularised network's Adam is rescaled so the effective step is unchanged.
        r1_ratio = options.r1_interval / (options.r1_interval + 1)
        pl_ratio = options.pl_interval / (options.pl_interval + 1) if options.pl_weight > 0 else 1.0
        self.opt_g = torch.optim.Adam(
            self.generator.parameters(), lr=options.lr * pl_ratio, betas=(0.0, 0.99**pl_ratio), eps=1e-8
        )
        self.opt_d = torch.optim.Adam(
            self.discriminator.parameters(), lr=options.lr * r1_ratio, betas=(0.0, 0.99**r1_ratio), eps=1e-8
        )
        self.sampler = torch.Generator().manual_seed(options.seed * 1000 + self.dist.rank)
        torch.manual_seed(options.seed * 1000 + self.dist.rank)
        self.step, self.images_seen, self.wall_s = 0, 0, 0.0
        self.mean_path_length = torch.zeros((), device=device)
        # The passes that run every step, compiled when asked; the modules themselves stay eager for R1, the
        # path length, the EMA and the checkpoints (a compiled module shares their parameters).
        self._generator_pass: Any = self.generator
        self._discriminator_pass: Any = self.discriminator
        if (
            device.type == "cpu"
            and options.precision == "bf16"
            and not torch.ops.mkldnn._is_mkldnn_bf16_supported()
        ):
            warnings.warn(
                "--precision bf16 on a CPU without bf16 units: bf16 is emulated, about 9x slower than fp32 "
                "here (benchmarks/train_speed.py)",
                stacklevel=2,
            )
        if options.compile:
            self._generator_pass = compile_or_eager(self.generator)
            self._discriminator_pass = compile_or_eager(self.discriminator)

    # ------------------------------------------------------------------ state
    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "images_seen": self.images_seen,
            "wall_s": self.wall_s,
            "architecture": self.architecture.to_dict(),
            "options": dataclasses.asdict(self.options),
        }

    def save(self) -> Path:
        """Writes the checkpoint (main process only)."""
        path = self.run_dir / CHECKPOINT_NAME
        if self.dist.is_main:
            extra = {
                "rng.torch": torch.get_rng_state(),
                "rng.sampler": self.sampler.get_state(),
                "mean_path_length": self.mean_path_length,
            }
            modules = {"G": self.generator, "G_ema": self.generator_ema, "D": self.discriminator}
            save_checkpoint(path, modules, {"opt_G": self.opt_g, "opt_D": self.opt_d}, extra, self._state())
        return path

    def resume(self) -> None:
        """Restores networks, optimisers, counters and RNGs from the run's checkpoint."""
        checkpoint = load_checkpoint(self.run_dir / CHECKPOINT_NAME)
        saved_architecture = checkpoint.state.get("architecture")
        if saved_architecture != self.architecture.to_dict():
            raise ConfigError(f"the checkpoint in {self.run_dir} was trained with another architecture")
        for name, module in (("G", self.generator), ("G_ema", self.generator_ema), ("D", self.discriminator)):
            checkpoint.restore_module(name, module)
        checkpoint.restore_optimizer("opt_G", self.opt_g)
        checkpoint.restore_optimizer("opt_D", self.opt_d)
        self.step = int(checkpoint.state["step"])
        self.images_seen = int(checkpoint.state["images_seen"])
        self.wall_s = float(checkpoint.state["wall_s"])
        self.mean_path_length = checkpoint.tensors["mean_path_length"].to(self.device)
        if self.dist.is_main:  # other ranks keep their own streams: rank 0's state is what was saved
            torch.set_rng_state(checkpoint.tensors["rng.torch"])
            self.sampler.set_state(checkpoint.tensors["rng.sampler"])

    # ------------------------------------------------------------------ one step
    def _autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 mixed precision (no loss scaling needed) where the options ask for it."""
        dtype = autocast_dtype(self.options.precision, self.device)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _d_logits(
        self, images: torch.Tensor, position: torch.Tensor, *, regularised: bool = False
    ) -> torch.Tensor:
        """D's logits on augmented images; the R1 pass runs eager in fp32 (it needs a double backward)."""
        augmented = diff_augment(images, self.policy)
        if regularised:
            return self.discriminator(augmented, position).float()
        with self._autocast():
            return self._discriminator_pass(augmented, position).float()

    def train_step(self) -> dict[str, float]:
        """One D step (with lazy R1) and one G step (with optional lazy path length), then the EMA update."""
        options, n = self.options, self.batch_per_process
        real, position = self.data.batch(n, self.sampler, self.device)
        stats: dict[str, float] = {}

        # Discriminator: real vs generated at the same slice positions.
        self.generator.requires_grad_(False)
        self.discriminator.requires_grad_(True)
        with torch.no_grad(), self._autocast():
            fake = self._generator_pass(torch.randn(n, self.generator.z_dim, device=self.device), position)
            fake = fake.float()
        real_logits, fake_logits = self._d_logits(real, position), self._d_logits(fake, position)
        loss_d = d_logistic_loss(real_logits, fake_logits)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        if self.step % options.r1_interval == 0 and options.r1_gamma > 0:
            real_r1 = real.detach().requires_grad_(True)
            penalty = r1_penalty(self._d_logits(real_r1, position, regularised=True), real_r1)
            (penalty * (options.r1_gamma / 2 * options.r1_interval)).backward()
            stats["r1"] = penalty.item()
        average_gradients(self.discriminator, self.dist)
        self.opt_d.step()
        stats.update(loss_d=loss_d.item(), d_real=real_logits.mean().item(), d_fake=fake_logits.mean().item())

        # Generator: fool D at real slice positions.
        self.generator.requires_grad_(True)
        self.discriminator.requires_grad_(False)
        with self._autocast():
            fake = self._generator_pass(torch.randn(n, self.generator.z_dim, device=self.device), position)
            fake = fake.float()
        loss_g = g_nonsaturating_loss(self._d_logits(fake, position))
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        if options.pl_weight > 0 and self.step % options.pl_interval == 0:
            pl_batch = max(1, n // 2)
            ws = self.generator.mapping(
                torch.randn(pl_batch, self.generator.z_dim, device=self.device), position[:pl_batch]
            )
            ws.requires_grad_(True)
            images = self.generator.synthesis(ws)
            penalty, self.mean_path_length = path_length_penalty(images, ws, self.mean_path_length)
            (penalty * options.pl_weight * options.pl_interval).backward()
        average_gradients(self.generator, self.dist)
        self.opt_g.step()
        stats["loss_g"] = loss_g.item()

        self._update_ema()
        self.step += 1
        self.images_seen += options.batch
        return stats

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Half-life ema_kimg, but at most 5% of the images seen so far, so the random start fades fast.
        half_life = min(self.options.ema_kimg * 1000, max(self.images_seen, 1) * 0.05)
        beta = 0.5 ** (self.options.batch / max(half_life, 1e-8))
        for ema, live in zip(self.generator_ema.parameters(), self.generator.parameters()):
            ema.lerp_(live, 1.0 - beta)
        for ema, live in zip(self.generator_ema.buffers(), self.generator.buffers()):
            ema.copy_(live)

    # ------------------------------------------------------------------ the loop
    def _should_stop(self, cancel: CancelFlag | None) -> bool:
        """True once any process was asked to stop; all processes agree, so none waits alone in a reduce."""
        stop = torch.tensor(float(cancel is not None and cancel.is_set), device=self.device)
        if self.dist.active:
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        return bool(stop.item())

    def train(self, cancel: CancelFlag | None = None, progress: bool = True) -> bool:
        """Trains to ``kimg`` thousand images; False when cancelled (a checkpoint is written either way)."""
        options, main = self.options, self.dist.is_main
        total = int(options.kimg * 1000)
        (self.run_dir / "samples").mkdir(parents=True, exist_ok=True)
        log_path = self.run_dir / "log.csv"
        new_log = not log_path.exists()
        bar = tqdm(
            total=total,
            initial=min(self.images_seen, total),
            unit="img",
            disable=not (progress and main),
            desc="train-gan",
            smoothing=0.05,
        )
        last_checkpoint = time.monotonic()
        next_sample = (
            math.floor(self.images_seen / (options.sample_every_kimg * 1000)) + 1
        ) * options.sample_every_kimg
        window_start, window_images, window_stats = time.monotonic(), 0, []
        cancelled = False
        with open(log_path, "a", newline="") if main else open(os.devnull, "w") as log_file:
            writer = csv.DictWriter(log_file, fieldnames=LOG_FIELDS)
            if new_log:
                writer.writeheader()
            while self.images_seen < total:
                if self._should_stop(cancel):
                    cancelled = True
                    break
                step_start = time.monotonic()
                window_stats.append(self.train_step())
                self.wall_s += time.monotonic() - step_start
                window_images += options.batch
                bar.update(options.batch)
                if self.step % options.log_every == 0 or self.images_seen >= total:
                    elapsed = time.monotonic() - window_start
                    row = {
                        key: float(np.mean([s[key] for s in window_stats if key in s] or [np.nan]))
                        for key in ("loss_d", "loss_g", "r1", "d_real", "d_fake")
                    }
                    row.update(
                        step=self.step,
                        kimg=self.images_seen / 1000,
                        images_seen=self.images_seen,
                        wall_s=round(self.wall_s, 2),
                        images_per_s=window_images / max(elapsed, 1e-9),
                    )
                    writer.writerow(row)
                    log_file.flush()
                    bar.set_postfix(
                        loss_d=f"{row['loss_d']:.3f}",
                        loss_g=f"{row['loss_g']:.3f}",
                        ips=f"{row['images_per_s']:.1f}",
                    )
                    window_start, window_images, window_stats = time.monotonic(), 0, []
                if main and self.images_seen >= next_sample * 1000:
                    write_sample_grid(
                        self.generator_ema,
                        self.run_dir / "samples" / f"kimg{int(next_sample * 1000):07d}.png",
                    )
                    next_sample += options.sample_every_kimg
                if time.monotonic() - last_checkpoint > options.checkpoint_every_s:
                    self.save()
                    last_checkpoint = time.monotonic()
        bar.close()
        self.save()
        if main:
            write_sample_grid(self.generator_ema, self.run_dir / "samples" / "latest.png")
        return not cancelled
