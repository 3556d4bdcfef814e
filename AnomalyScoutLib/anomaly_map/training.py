"""Training the anomaly-map head on normal slices with generic synthetic anomalies.

Each step takes a batch of normal slices, gives about half of them an anomaly of a random training family
(:mod:`.synthesis`; the foreign content comes from another volume), reconstructs every slice of the batch
**as it now is** with the frozen generator + encoder (so the head learns how much of an anomaly the
reconstruction copies, as it will at scoring time), and fits the head's map to the synthetic truth with
DRAEM's focal loss plus a soft Dice term (anomalous pixels are rare).

One family (``holdout``) is never trained on: the validation set is made of it and of normal slices of
held-out volumes, so the checkpoint kept is the one that generalises to a kind of anomaly it never saw,
not the one that learnt the training families best. The log and the best checkpoint are written as training
goes, so that a long run can be watched and stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save
from torch import nn
from tqdm import tqdm

from AnomalyScoutLib import metrics
from AnomalyScoutLib.anomaly_map.data import NormalSlices
from AnomalyScoutLib.anomaly_map.head import HEAD_KEY, AnomalyHead
from AnomalyScoutLib.anomaly_map.synthesis import FAMILIES, Synthesized, synthesize_batch
from AnomalyScoutLib.atomic import write_bytes_atomic
from AnomalyScoutLib.cancellation import CancelFlag
from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.inversion import InversionConfig, Reconstructor
from AnomalyScoutLib.preprocessing import HUWindow
from AnomalyScoutLib.train.run_log import append_log_row

if TYPE_CHECKING:
    from AnomalyScoutLib.model_file import AnomalyModel

__all__ = [
    "HEAD_WEIGHTS_KEY",
    "HeadTrainer",
    "HeadTrainingOptions",
    "Reconstruct",
    "attach_head",
    "fast_reconstruction",
    "focal_loss",
    "map_loss",
    "set_top_fraction",
    "soft_dice_loss",
]

#: Header key of the weight files a training run writes (``head_best.safetensors``, the snapshots).
HEAD_WEIGHTS_KEY = "anomalyscout_head"

#: ``(images (N, H, W), positions (N,), body (N, H, W)) -> reconstructions (N, H, W)``, without gradients.
Reconstruct = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class HeadTrainingOptions:
    """Settings of one head training run (stored in the model file's ``head.training``)."""

    steps: int = 3000
    batch: int = 16
    lr: float = 1e-3
    anomaly_share: float = 0.5
    holdout: str = "poisson_patch"
    validation_slices: int = 64
    validate_every: int = 100
    max_minutes: float = 0.0
    seed: int = 0
    #: Also keep the weights of every validation in ``snapshots/`` of the run folder, so that a checkpoint
    #: can be chosen afterwards by another criterion (``benchmarks/head_selection.py``: validation phantoms).
    snapshots: bool = False

    def __post_init__(self) -> None:
        if self.holdout not in FAMILIES:
            raise ConfigError(f"holdout {self.holdout!r} is not a synthesis family ({', '.join(FAMILIES)})")
        if self.steps < 1 or self.batch < 2 or self.validation_slices < 4 or self.validate_every < 1:
            raise ConfigError(
                "steps >= 1, batch >= 2, validation_slices >= 4 and validate_every >= 1 are needed"
            )
        if not 0.0 < self.anomaly_share < 1.0 or not self.lr > 0 or self.max_minutes < 0:
            raise ConfigError("anomaly_share must be in (0, 1), lr > 0 and max_minutes >= 0")

    @property
    def training_families(self) -> tuple[str, ...]:
        return tuple(f for f in FAMILIES if f != self.holdout)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Mean focal loss (Lin et al.; DRAEM's loss): BCE down-weighted on pixels already classified well."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_true = torch.exp(-bce)
    return ((1.0 - p_true) ** gamma * bce).mean()


def soft_dice_loss(probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice over the slices that hold an anomaly (0 when none does)."""
    has = target.flatten(1).sum(1) > 0
    if not has.any():
        return probabilities.sum() * 0.0
    p, t = probabilities[has].flatten(1), target[has].flatten(1)
    return (1.0 - (2.0 * (p * t).sum(1) + 1.0) / (p.sum(1) + t.sum(1) + 1.0)).mean()


def map_loss(logits: torch.Tensor, masks: torch.Tensor, body: torch.Tensor) -> torch.Tensor:
    """The head's loss against boolean truth ``masks``: focal loss plus soft Dice inside the ``body``."""
    target = masks.float()
    return focal_loss(logits, target) + soft_dice_loss(torch.sigmoid(logits) * body, target)


@dataclass
class _Validation:
    images: torch.Tensor
    reconstructions: torch.Tensor
    positions: torch.Tensor
    body: torch.Tensor
    masks: torch.Tensor
    family: list[str | None] = field(default_factory=list)


class HeadTrainer:
    """Trains ``head`` in place on ``train`` slices, validating on ``validation`` slices.

    Args:
        head: the network to train (its config says whether it sees the reconstruction).
        train: normal training slices (from several volumes: donors come from another volume).
        validation: normal slices of held-out volumes.
        reconstruct: the frozen pseudo-normal reconstruction (fast mode of the model).
        options: the run's settings.
        window: the HU window of the slices (the synthesis works in HU).
        device: where the head trains.
        run_folder: where ``log.csv``, ``head_best.safetensors`` (and ``snapshots/step-NNNNNN.safetensors``
            with ``options.snapshots``) go as training runs (None: nowhere).
    """

    def __init__(
        self,
        head: AnomalyHead,
        train: NormalSlices,
        validation: NormalSlices,
        reconstruct: Reconstruct,
        options: HeadTrainingOptions,
        window: HUWindow,
        device: torch.device,
        run_folder: Path | None = None,
    ) -> None:
        self.head = head.to(device)
        self.run_folder = run_folder
        self.train_set, self.validation_set = train, validation
        self.reconstruct, self.options, self.window, self.device = reconstruct, options, window, device
        self.generator = torch.Generator().manual_seed(options.seed)
        self.optimizer = torch.optim.Adam(self._trained_parameters(), lr=options.lr)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, options.steps)
        self.step = 0
        self.best: dict[str, Any] | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, Any]] = []
        self._validation = self._make_validation()

    def _trained_parameters(self) -> list[nn.Parameter]:
        """What the optimiser updates: the head (a subclass that trains its reconstruction adds that)."""
        return list(self.head.parameters())

    def _donors(self, data: NormalSlices, index: torch.Tensor) -> torch.Tensor:
        """For each chosen slice, a random slice of another volume (any slice if there is one volume)."""
        donors = torch.randint(len(data), (len(index),), generator=self.generator)
        for i, (slice_index, donor) in enumerate(zip(index.tolist(), donors.tolist())):
            others = torch.nonzero(data.volume != data.volume[slice_index]).flatten()
            if len(others):
                donors[i] = others[int(torch.randint(len(others), (), generator=self.generator))]
            else:
                donors[i] = donor
        return data.images[donors]

    def _families(self, n: int, choices: tuple[str, ...]) -> list[str | None]:
        draws = torch.rand(n, generator=self.generator) < self.options.anomaly_share
        picks = torch.randint(len(choices), (n,), generator=self.generator)
        return [choices[int(p)] if d else None for d, p in zip(draws, picks)]

    def _draw(self) -> tuple[torch.Tensor, list[str | None]]:
        """A training batch: random slices, and a training family (or none) for each."""
        index = torch.randint(len(self.train_set), (self.options.batch,), generator=self.generator)
        return index, self._families(len(index), self.options.training_families)

    def _synthesize(self, data: NormalSlices, index: torch.Tensor, families: list[str | None]) -> Synthesized:
        """The chosen slices of ``data``, each with an anomaly of its family (donors: other volumes)."""
        return synthesize_batch(
            data.images[index],
            data.body[index],
            self._donors(data, index),
            families,
            self.generator,
            self.window,
        )

    def _batch(
        self, data: NormalSlices, index: torch.Tensor, families: list[str | None]
    ) -> tuple[torch.Tensor, ...]:
        """Synthesised slices, their reconstructions, positions, body and truth, on the device."""
        made = self._synthesize(data, index, families)
        positions, body = data.positions[index], data.body[index]
        recon = made.images  # a placeholder the head does not read when it has no reconstruction input
        if self._uses_recon:
            with torch.no_grad():
                recon = self.reconstruct(made.images, positions, body).float()
        return tuple(t.to(self.device) for t in (made.images, recon, positions, body, made.masks))

    def _make_validation(self) -> _Validation:
        """A fixed validation set: the held-out family on half of the slices (the same for every check)."""
        data = self.validation_set
        n = min(self.options.validation_slices, len(data))
        index = torch.randperm(len(data), generator=self.generator)[:n]
        families: list[str | None] = [self.options.holdout if i % 2 else None for i in range(n)]
        images, recon, positions, body, masks = self._batch(data, index, families)
        return _Validation(images, recon, positions, body, masks, families)

    def validate(self) -> dict[str, float]:
        """Slice AUROC (synthetic vs normal) and pixel AP (inside the body) on the held-out family."""
        v = self._validation
        self.head.eval()
        with torch.no_grad():
            maps = self.head.anomaly_map(
                v.images, v.reconstructions if self._uses_recon else None, v.positions, v.body
            )
            scores = self.head.slice_scores(maps, v.body)
        self.head.train()
        labels = np.array([f is not None for f in v.family]) & (v.masks.flatten(1).any(1).cpu().numpy())
        keep = np.array([f is None for f in v.family]) | labels  # drop synthesised slices left unchanged
        inside = v.body.cpu().numpy()
        return {
            "slice_auroc": metrics.roc_auc(labels[keep], scores.cpu().numpy()[keep]),
            "pixel_ap": metrics.average_precision(v.masks.cpu().numpy()[inside], maps.cpu().numpy()[inside]),
        }

    @property
    def _uses_recon(self) -> bool:
        return self.head.config.use_reconstruction

    def train_step(self) -> float:
        """One optimisation step on a fresh synthetic batch; returns the loss."""
        index, families = self._draw()
        images, recon, positions, body, masks = self._batch(self.train_set, index, families)
        logits = self.head(images, recon if self._uses_recon else None, positions)
        return self._optimise(map_loss(logits, masks, body))

    def _optimise(self, loss: torch.Tensor) -> float:
        """One optimiser and schedule step on ``loss``; returns its value."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        self.step += 1
        return float(loss.detach())

    def train(self, cancel: CancelFlag | None = None, progress: bool = False) -> bool:
        """Train until ``steps`` or ``max_minutes``; keep the best validated weights in the head.

        Writes ``log.csv`` (one row per validation) and ``head_best.safetensors`` (the best weights so far,
        with the options and validation in its header) to the run folder as it goes.

        Returns:
            False when ``cancel`` stopped it (the head then holds the best weights so far).
        """
        options, started = self.options, time.perf_counter()
        self.head.train()
        losses: list[float] = []
        finished = True
        with tqdm(total=options.steps, desc="head", unit="step", disable=not progress) as bar:
            while self.step < options.steps:
                if cancel is not None and cancel.is_set:
                    finished = False
                    break
                losses.append(self.train_step())
                bar.update(1)
                elapsed = time.perf_counter() - started
                out_of_time = options.max_minutes > 0 and elapsed > 60.0 * options.max_minutes
                if self.step % options.validate_every == 0 or self.step == options.steps or out_of_time:
                    self._checkpoint(float(np.mean(losses)), elapsed)
                    losses = []
                if out_of_time:
                    break
        if self.best_state is not None:
            self.head.load_state_dict(self.best_state)
        self.head.eval()
        return finished

    def _checkpoint(self, loss: float, elapsed: float) -> None:
        run_folder = self.run_folder
        row = {"step": self.step, "loss": round(loss, 5), "seconds": round(elapsed, 1), **self.validate()}
        self.history.append(row)
        criterion = row["slice_auroc"] + row["pixel_ap"]
        if self.best is None or criterion > self.best["slice_auroc"] + self.best["pixel_ap"]:
            self.best = row
            self.best_state = {k: v.detach().clone() for k, v in self.head.state_dict().items()}
            if run_folder is not None:
                self._write_weights(run_folder / "head_best.safetensors", self.best_state, {"best": row})
        if run_folder is not None and self.options.snapshots:
            (run_folder / "snapshots").mkdir(exist_ok=True)
            self._write_weights(
                run_folder / "snapshots" / f"step-{self.step:06d}.safetensors",
                self.head.state_dict(),
                {"row": row},
            )
        if run_folder is not None:
            append_log_row(run_folder / "log.csv", row)

    def _write_weights(self, path: Path, state: dict[str, torch.Tensor], record: dict[str, Any]) -> None:
        """The head's weights in float32 with its config, the run's options and ``record`` in the header."""
        tensors = {k: v.detach().cpu().float().contiguous() for k, v in state.items()}
        header = {"config": self.head.config.to_dict(), "options": asdict(self.options), **record}
        write_bytes_atomic(path, save(tensors, metadata={HEAD_WEIGHTS_KEY: json.dumps(header)}))

    def summary(self) -> dict[str, Any]:
        """What the model file records about this training."""
        return {
            "options": asdict(self.options),
            "training_families": list(self.options.training_families),
            "training_slices": len(self.train_set),
            "validation_slices": len(self._validation.images),
            "steps_done": self.step,
            "best": self.best,
            "history": self.history,
        }


def attach_head(model: AnomalyModel, head: AnomalyHead, training: dict[str, Any]) -> None:
    """Put ``head`` into ``model`` (replacing any other) with its settings and training record, ready to
    :meth:`~AnomalyScoutLib.model_file.AnomalyModel.save`.

    The model's calibration is dropped: it describes the residual's scores (or another head's), and a stale
    one would set wrong thresholds; ``anomalyscout calibrate`` makes the head's. A head that reads the atlas
    is linked to the model's.

    Raises:
        ConfigError: the head reads a position atlas and the model holds none.
    """
    if head.config.use_atlas:
        if model.atlas is None:
            raise ConfigError(
                "the head reads a position atlas and the model holds none (anomalyscout fit-atlas)"
            )
        head.read_atlas(model.atlas.cpu())
    model.head = head.cpu().eval().requires_grad_(False)
    model.calibration = None
    model.metadata[HEAD_KEY] = {"config": head.config.to_dict(), "training": training}


def set_top_fraction(model: AnomalyModel, top_fraction: float) -> None:
    """Make the head's slice score read the top ``top_fraction`` of its map (weights unchanged).

    The share is chosen after training, on validation anomalies (``benchmarks/head_top_fraction.py``): a map
    that saturates on a small share of normal pixels needs a wider one. The calibration is dropped, as by
    :func:`attach_head`, since every slice score changes.

    Raises:
        ConfigError: the model has no head, or the share is not in (0, 1].
    """
    if model.head is None:
        raise ConfigError("the model holds no anomaly-map head")
    head = AnomalyHead(replace(model.head.config, top_fraction=top_fraction))
    head.load_state_dict(model.head.state_dict())
    attach_head(model, head, model.metadata[HEAD_KEY]["training"])


def fast_reconstruction(model: AnomalyModel, device: torch.device) -> Reconstruct:
    """The model's fast-mode reconstruction (encoder + generator), what the head sees at scoring time."""
    reconstructor = Reconstructor(
        model.generator, model.encoder, model.discriminator, InversionConfig(mode="fast"), device
    )

    def reconstruct(images: torch.Tensor, positions: torch.Tensor, body: torch.Tensor) -> torch.Tensor:
        result = reconstructor.reconstruct(images.to(device), positions.to(device), body.to(device))
        return result.images.clone()  # out of inference mode, so that it can enter the head's graph

    return reconstruct
