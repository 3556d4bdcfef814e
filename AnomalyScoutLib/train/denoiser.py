"""Training the denoiser (:mod:`AnomalyScoutLib.denoiser`) on normal slices, with exact resume.

Each step takes a batch of normal slices, shifts it by up to ``shift`` pixels (a few volumes make few
distinct slices), adds coarse noise and asks the U-Net for the clean batch (mean squared error). The run
folder receives ``checkpoint.safetensors`` (network, Adam moments, RNG state, step) every
``checkpoint_minutes`` and at the end, and ``log.csv``; a resumed run continues exactly where it stopped.

The U-Net has no normalisation layers, and at a constant Adam rate of 1e-3 a long run diverged (loss 0.0007
at step 10430, 1e8 at 11596). So the gradient's norm is clipped, the rate halves every ``lr_halflife`` steps
(a schedule by step, not by the run's total, so that a run can be extended), and a window whose loss is not
finite or jumps tenfold stops the run without overwriting the last sound checkpoint.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from AnomalyScoutLib.anomaly_map.data import NormalSlices
from AnomalyScoutLib.calibration import DENOISER_CALIBRATION_KEY, Calibration
from AnomalyScoutLib.cancellation import CancelFlag
from AnomalyScoutLib.denoiser import DENOISER_KEY, Denoiser, coarse_noise
from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from AnomalyScoutLib.train.run_log import append_log_row

__all__ = ["DIVERGENCE_FACTOR", "DenoiserTrainer", "DenoiserTrainingOptions", "TrainingDivergedError",
           "attach_denoiser"]  # fmt: skip

DIVERGENCE_FACTOR = 10.0
"""A checkpoint window whose mean loss is this many times the previous window's is a divergence."""

SCHEDULE_OPTIONS = ("lr", "lr_halflife", "grad_clip")
"""Options a resumed run may change: a run that diverged goes on from its last sound checkpoint at a lower
rate or with a tighter clip. The data it draws and the network must stay the same."""


class TrainingDivergedError(ConfigError):
    """The loss stopped being finite or jumped: the last sound checkpoint is kept, resume at a lower rate."""


@dataclass(frozen=True)
class DenoiserTrainingOptions:
    """Settings of one denoiser training run (stored in the model file's ``denoiser.training``).

    ``steps`` is the run's total and ``max_minutes`` limits one invocation (0: none): a run is continued, or
    extended, by resuming it with the same other options (the schedule, :data:`SCHEDULE_OPTIONS`, may
    change). The learning rate at step ``t`` is ``lr * 0.5 ** (t / lr_halflife)`` (``lr_halflife`` 0:
    constant); ``grad_clip`` is the largest gradient norm a step applies (0: no clipping).

    ``noise_grids``: the sides of the noise grids a step draws its noise on, one chosen at random per step
    (empty: the network's own ``coarse``). The denoiser removes what it was taught to remove: noise on a
    16-cell grid is blobs of about 8 pixels at 128 px, and a coarser grid teaches it to redraw larger
    regions from their surroundings, where diffuse changes (fluid, a density shift) would stand out."""

    steps: int = 20000
    batch: int = 16
    lr: float = 1e-3
    lr_halflife: int = 10000
    grad_clip: float = 1.0
    shift: int = 4
    noise_grids: tuple[int, ...] = ()
    max_minutes: float = 0.0
    checkpoint_minutes: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch < 1 or self.shift < 0:
            raise ConfigError("steps >= 1, batch >= 1 and shift >= 0 are needed")
        if any(side < 1 for side in self.noise_grids):
            raise ConfigError(f"noise grid sides must be >= 1, got {list(self.noise_grids)}")
        if self.lr_halflife < 0 or self.grad_clip < 0:
            raise ConfigError("lr_halflife >= 0 and grad_clip >= 0 are needed (0: off)")
        if not self.lr > 0 or self.max_minutes < 0 or not self.checkpoint_minutes > 0:
            raise ConfigError("lr > 0, max_minutes >= 0 and checkpoint_minutes > 0 are needed")

    def same_run(self) -> dict[str, Any]:
        """What a resumed run must share with the one it continues (not its length, time limits or
        schedule)."""
        free = ("steps", "max_minutes", "checkpoint_minutes", *SCHEDULE_OPTIONS)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k not in free}

    def learning_rate(self, step: int) -> float:
        """The rate of step ``step`` (counted from the run's start)."""
        return self.lr if self.lr_halflife == 0 else self.lr * 0.5 ** (step / self.lr_halflife)


class DenoiserTrainer:
    """Trains ``denoiser`` in place on normal ``slices``; ``run_folder`` holds the checkpoint and log."""

    def __init__(
        self,
        denoiser: Denoiser,
        slices: NormalSlices,
        options: DenoiserTrainingOptions,
        device: torch.device,
        run_folder: Path | None = None,
    ) -> None:
        if len(slices) == 0:
            raise ConfigError("the denoiser needs at least one training slice")
        self.denoiser, self.options = denoiser.to(device), options
        self.device, self.run_folder = device, run_folder
        self.images = slices.images
        self.generator = torch.Generator().manual_seed(options.seed)
        self.optimizer = torch.optim.Adam(self.denoiser.parameters(), lr=options.lr)
        self.step, self.seconds, self.last_loss = 0, 0.0, float("nan")

    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.run_folder is None else self.run_folder / CHECKPOINT_NAME

    def resume(self) -> bool:
        """Continue from the run folder's checkpoint, if there is one (False: none, a fresh start).

        Raises:
            ConfigError: the checkpoint is of a run with other settings.
        """
        path = self.checkpoint_path
        if path is None or not path.is_file():
            return False
        checkpoint = load_checkpoint(path)
        state = checkpoint.state
        config = self.denoiser.config.to_dict()
        # A run from before an option existed ran with its default.
        stored = {**DenoiserTrainingOptions().same_run(), **dict(state.get("options") or {})}
        stored = {k: v for k, v in stored.items() if k not in SCHEDULE_OPTIONS}
        if stored != self.options.same_run() or state.get("config") != config:
            raise ConfigError(f"{path} is a denoiser run with other settings; use another --run folder")
        checkpoint.restore_module("denoiser", self.denoiser)
        checkpoint.restore_optimizer("adam", self.optimizer)
        self.generator.set_state(checkpoint.tensors["generator_state"])
        self.step, self.seconds = int(state["step"]), float(state["seconds"])
        self.last_loss = float(state.get("last_loss", math.nan))
        return True

    def train_step(self) -> float:
        """One optimisation step on a fresh noisy batch; returns the loss."""
        options = self.options
        index = torch.randint(len(self.images), (options.batch,), generator=self.generator)
        batch = self.images[index][:, None]
        dy, dx = torch.randint(-options.shift, options.shift + 1, (2,), generator=self.generator).tolist()
        batch = torch.roll(batch, shifts=(dy, dx), dims=(2, 3))
        noisy = batch + coarse_noise(
            tuple(batch.shape), self.generator, self._noise_grid(), self.denoiser.config.sigma
        )
        batch, noisy = batch.to(self.device), noisy.to(self.device)
        loss = F.mse_loss(self.denoiser(noisy[:, 0]), batch[:, 0])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if options.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.denoiser.parameters(), options.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = options.learning_rate(self.step)
        self.optimizer.step()
        self.step += 1
        return float(loss.detach())

    def _noise_grid(self) -> int:
        """This step's noise grid side: one of ``noise_grids`` at random, or the network's ``coarse``."""
        grids = self.options.noise_grids
        if not grids:  # draws nothing, so that a run from before the option resumes exactly
            return self.denoiser.config.coarse
        return grids[int(torch.randint(len(grids), (1,), generator=self.generator))]

    def train(self, cancel: CancelFlag | None = None, progress: bool = False) -> bool:
        """Train until ``steps`` or ``max_minutes``, checkpointing as it goes.

        Returns:
            False when ``cancel`` stopped it (the checkpoint then holds the last step).

        Raises:
            TrainingDivergedError: the loss diverged; the checkpoint holds the last sound step.
        """
        options, started = self.options, time.perf_counter()
        last_checkpoint, losses, finished = started, [], True
        self.denoiser.train()
        bar = tqdm(total=options.steps, initial=self.step, desc="denoiser", unit="step", disable=not progress)
        with bar:
            while self.step < options.steps:
                if cancel is not None and cancel.is_set:
                    finished = False
                    break
                losses.append(self.train_step())
                bar.update(1)
                now = time.perf_counter()
                if now - last_checkpoint > 60.0 * options.checkpoint_minutes:
                    self._checkpoint(losses, now - started)
                    last_checkpoint, losses = now, []
                if options.max_minutes > 0 and now - started > 60.0 * options.max_minutes:
                    break
        elapsed = time.perf_counter() - started
        self._checkpoint(losses, elapsed)
        self.seconds += elapsed
        self.denoiser.eval()
        return finished

    def _checkpoint(self, losses: list[float], elapsed: float) -> None:
        """Log the mean loss since the last checkpoint and write the checkpoint (with a run folder), unless
        the loss diverged in the meantime."""
        seconds = self.seconds + elapsed
        if losses:
            loss = float(np.mean(losses))
            if not math.isfinite(loss) or loss > DIVERGENCE_FACTOR * self.last_loss:
                raise TrainingDivergedError(
                    f"the denoiser's loss diverged (mean {loss:.3g} over the steps before {self.step}, "
                    f"{self.last_loss:.3g} before them); the run folder keeps its last sound checkpoint: "
                    "resume with a lower --lr"
                )
            self.last_loss = loss
        if self.run_folder is None:
            return
        self.run_folder.mkdir(parents=True, exist_ok=True)
        save_checkpoint(
            self.checkpoint_path,
            {"denoiser": self.denoiser},
            {"adam": self.optimizer},
            {"generator_state": self.generator.get_state()},
            {"options": self.options.same_run(), "config": self.denoiser.config.to_dict(),
             "step": self.step, "seconds": seconds, "last_loss": self.last_loss},
        )  # fmt: skip
        row = {"step": self.step, "loss": round(self.last_loss, 6), "seconds": round(seconds, 1)}
        append_log_row(self.run_folder / "log.csv", row)

    def summary(self) -> dict[str, Any]:
        """What the model file records about this training."""
        return {"options": asdict(self.options), "training_slices": len(self.images), "steps_done": self.step,
                "seconds": round(self.seconds, 1), "last_loss": self.last_loss}  # fmt: skip


def attach_denoiser(model: AnomalyModel, denoiser: Denoiser, training: dict[str, Any]) -> None:
    """Put ``denoiser`` into ``model`` (replacing any other) with its settings and training record, ready to
    :meth:`~AnomalyScoutLib.model_file.AnomalyModel.save`. The calibration of an earlier denoiser is
    dropped (a stale one would set wrong thresholds); the model's other calibrations stay."""
    model.denoiser = denoiser.cpu().eval().requires_grad_(False)
    model.metadata[DENOISER_KEY] = {"config": denoiser.config.to_dict(), "training": training}
    calibration = Calibration.from_json(model.calibration)
    if DENOISER_CALIBRATION_KEY in calibration.modes:
        modes = {k: v for k, v in calibration.modes.items() if k != DENOISER_CALIBRATION_KEY}
        model.calibration = Calibration(modes, calibration.default_fpr).to_json()
