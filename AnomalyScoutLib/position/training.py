"""Training the body-part regressor: supervised on the phantom, self-supervised on every scan.

Two losses, as in SSBR (Yan et al. 2018) and BPR (Schuhegger et al. 2021):

- **supervised** (phantom slices): the phantom's slice position *is* the anatomical scale (its volumes run
  from the pelvis floor to the lung bases), so each phantom slice has a known target; a Huber loss.
- **self-supervised** (runs of equally spaced slices of any scan, real ones included, no labels): positions
  must increase with z (order loss), equal steps in z must give equal steps in position (distance loss), and
  the step per mm must match a plausible body size (scale loss, :data:`fit.BODY_SCALE_RANGE`).

Strong augmentation makes the phantom's lessons transfer to real CT: rotation, scale, shifts, left-right and
front-back flips of the field of view, HU gain and offset, noise and blur. The phantom's anomaly inserters
are never used: the regressor learns normal anatomy only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.io.geometry import axial_frame, to_canonical
from AnomalyScoutLib.io.volume import read_volume
from AnomalyScoutLib.phantom import make_phantom
from AnomalyScoutLib.position.fit import BODY_SCALE_RANGE, MM_PER_UNIT
from AnomalyScoutLib.position.network import PositionRegressor, RegressorConfig, regressor_input

__all__ = [
    "TrainingConfig",
    "TrainingVolume",
    "phantom_volumes",
    "real_volume",
    "self_supervised_loss",
    "train_regressor",
    "training_summary",
    "validation_error",
]

#: In-plane pixel size that training volumes are pooled to at most (the regressor sees 6-7 mm pixels).
_TRAINING_PIXEL_MM = 2.5


@dataclass(frozen=True)
class TrainingVolume:
    """One canonical volume to learn from: HU ``(n, rows, cols)``, spacing, and positions when known."""

    name: str
    hu: torch.Tensor
    spacing_kji: tuple[float, float, float]
    truth: np.ndarray | None


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings of ``anomalyscout position-train`` (stored in the regressor file's JSON)."""

    steps: int = 2000
    batch: int = 48
    runs: int = 4
    run_length: int = 8
    learning_rate: float = 2e-3
    self_supervised_weight: float = 1.0
    #: Share of the self-supervised runs drawn from volumes without known positions (real CT) when there
    #: are any. Drawn uniformly over all volumes, one real CT among 24 phantoms got a run every sixth step,
    #: too little to straighten its positions: the regressor placed whole regions of it on plateaus.
    real_run_share: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch < 1 or self.runs < 0 or self.run_length < 3:
            raise ConfigError(
                "position training needs steps >= 1, batch >= 1, runs >= 0 and run_length >= 3, got "
                f"{self.steps}, {self.batch}, {self.runs}, {self.run_length}"
            )
        if not self.learning_rate > 0:
            raise ConfigError(f"learning rate must be positive, got {self.learning_rate}")
        if not 0.0 <= self.real_run_share <= 1.0:
            raise ConfigError(f"the real-run share must lie in [0, 1], got {self.real_run_share}")


def _pooled(hu: np.ndarray, spacing_kji: tuple[float, float, float]) -> tuple[torch.Tensor, tuple]:
    """Average-pool in-plane to about :data:`_TRAINING_PIXEL_MM` (cheaper sampling, same regressor input)."""
    factor = max(1, int(_TRAINING_PIXEL_MM // max(spacing_kji[1:])))
    tensor = torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))
    if factor > 1:
        tensor = F.avg_pool2d(tensor[:, None], factor, stride=factor, ceil_mode=True)[:, 0]
    return tensor, (spacing_kji[0], spacing_kji[1] * factor, spacing_kji[2] * factor)


def phantom_volumes(
    seeds: Sequence[int], rng: np.random.Generator, side: int = 96, slices: tuple[int, int] = (50, 110)
) -> list[TrainingVolume]:
    """Normal phantoms (no anomalies) with random slice counts; their positions are known exactly."""
    volumes = []
    for seed in seeds:
        n = int(rng.integers(slices[0], slices[1] + 1))
        case = make_phantom(int(seed), shape_xyz=(side, side, n))
        sx, sy, sz = case.volume.spacing_xyz
        hu, spacing = _pooled(case.volume.array_zyx, (sz, sy, sx))
        truth = (np.arange(n) + 0.5) / n
        volumes.append(TrainingVolume(f"phantom(seed={seed})", hu, spacing, truth))
    return volumes


def real_volume(path: str | Path) -> TrainingVolume:
    """A real CT for the self-supervised losses (no positions needed)."""
    volume = read_volume(path)
    frame = axial_frame(volume)
    hu, spacing = _pooled(to_canonical(volume.array_zyx, frame), frame.spacing_kji)
    return TrainingVolume(str(path), hu, spacing, None)


def _augmentation(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random output-grid matrices (rotation ±25°, scale 0.8-1.25, flips) and field-of-view shifts (mm).

    Front-back flips as often as left-right ones, and rotations beyond the 10-20° of an oblique
    reconstruction: with ±15° and one front-back flip in five, mirrored and oblique slices were placed
    almost twice as far off as plain ones.
    """
    angle = rng.uniform(-25.0, 25.0, n) * math.pi / 180.0
    scale = np.exp(rng.uniform(math.log(0.8), math.log(1.25), n))
    flip_lr = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    flip_ap = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
    matrix = np.stack([np.stack([cos * flip_lr, -sin], -1), np.stack([sin * flip_lr, cos], -1)], 1)
    matrix = matrix * np.stack([np.ones(n), flip_ap], -1)[:, None, :]
    shift = rng.normal(0.0, 12.0, (n, 2))
    return torch.from_numpy(matrix).float(), torch.from_numpy(shift).float()


def _augmented_input(
    hu: torch.Tensor, spacing_rc: tuple[float, float], config: RegressorConfig, rng: np.random.Generator
) -> torch.Tensor:
    """Regressor input of one volume's slices with geometric and intensity augmentation."""
    n = hu.shape[0]
    gain = float(rng.uniform(0.9, 1.1))
    offset = float(rng.uniform(-40.0, 40.0))
    matrix, shift = _augmentation(n, rng)
    x = regressor_input(hu * gain + offset, spacing_rc, config, matrix, shift)
    if rng.random() < 0.5:
        x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    noise = float(rng.uniform(0.0, 0.08))
    return (x + noise * torch.randn(x.shape, generator=_torch_rng(rng))).clamp(-1.0, 1.0)


def _torch_rng(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(0, 2**31 - 1)))


def _supervised_batch(
    volumes: list[TrainingVolume], batch: int, config: RegressorConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    labelled = [v for v in volumes if v.truth is not None]
    inputs, targets = [], []
    per_volume = max(1, batch // 8)
    while sum(len(t) for t in targets) < batch:
        volume = labelled[int(rng.integers(len(labelled)))]
        ks = rng.choice(len(volume.truth), size=min(per_volume, len(volume.truth)), replace=False)
        inputs.append(_augmented_input(volume.hu[ks], volume.spacing_kji[1:], config, rng))
        targets.append(torch.from_numpy(volume.truth[ks]).float())
    return torch.cat(inputs), torch.cat(targets)


def _run(volume: TrainingVolume, length: int, rng: np.random.Generator) -> tuple[np.ndarray, float] | None:
    """Indices of ``length`` equally spaced slices of ``volume`` (stride 6-40 mm) and the step in mm."""
    n = volume.hu.shape[0]
    max_stride = (n - 1) // (length - 1)
    if max_stride < 1:
        return None
    lo = max(1, int(math.ceil(6.0 / volume.spacing_kji[0])))
    hi = max(lo, min(max_stride, int(40.0 / volume.spacing_kji[0])))
    stride = int(rng.integers(min(lo, max_stride), min(hi, max_stride) + 1))
    start = int(rng.integers(0, n - stride * (length - 1)))
    return start + stride * np.arange(length), stride * volume.spacing_kji[0]


def _run_volume(
    labelled: list[TrainingVolume],
    unlabelled: list[TrainingVolume],
    real_share: float,
    rng: np.random.Generator,
) -> TrainingVolume:
    """The volume of one self-supervised run: a real one with probability ``real_share`` when there is any."""
    pool = unlabelled if unlabelled and rng.random() < real_share else labelled
    return pool[int(rng.integers(len(pool)))]


def self_supervised_loss(predictions: torch.Tensor, step_mm: torch.Tensor) -> torch.Tensor:
    """Order, distance and scale losses of runs of equally spaced slices.

    Args:
        predictions: ``(runs, length)`` positions of each run's slices, inferior to superior.
        step_mm: ``(runs,)`` distance between neighbouring slices of each run.
    """
    steps = predictions[:, 1:] - predictions[:, :-1]
    expected = step_mm[:, None] / MM_PER_UNIT
    order = F.softplus(-steps / (0.25 * expected)).mean() * 0.01
    distance = F.smooth_l1_loss(steps, steps.mean(dim=1, keepdim=True).expand_as(steps), beta=0.01)
    rate = steps.mean(dim=1) / expected[:, 0]
    low, high = 1.0 / BODY_SCALE_RANGE[1], 1.0 / BODY_SCALE_RANGE[0]
    scale = (F.relu(low - rate) + F.relu(rate - high)).pow(2).mean()
    return order + distance + scale


def train_regressor(
    volumes: list[TrainingVolume],
    config: RegressorConfig,
    training: TrainingConfig,
    log: Callable[[str], None] | None = None,
    device: torch.device | str = "cpu",
) -> tuple[PositionRegressor, list[dict[str, float]]]:
    """Train a fresh regressor on ``device``; returns it on the CPU (eval mode), where placement runs, and
    the loss history (one row per 50 steps).

    Batches are sampled and augmented on the CPU from the same seeded generators whatever the device, so a
    GPU changes only where the network's steps run.
    """
    if not any(v.truth is not None for v in volumes):
        raise ConfigError("position training needs at least one volume with known positions (a phantom)")
    rng = np.random.default_rng(training.seed)
    torch.manual_seed(training.seed)
    labelled = [v for v in volumes if v.truth is not None]
    unlabelled = [v for v in volumes if v.truth is None]
    regressor = PositionRegressor(config).to(device)
    optimiser = torch.optim.AdamW(regressor.parameters(), lr=training.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, training.learning_rate, total_steps=training.steps, pct_start=0.1
    )
    history: list[dict[str, float]] = []
    sums = np.zeros(2)
    start = time.perf_counter()
    regressor.train()
    for step in range(1, training.steps + 1):
        x, target = _supervised_batch(volumes, training.batch, config, rng)
        runs, steps_mm = [], []
        for _ in range(training.runs):
            volume = _run_volume(labelled, unlabelled, training.real_run_share, rng)
            run = _run(volume, training.run_length, rng)
            if run is not None:
                runs.append(_augmented_input(volume.hu[run[0]], volume.spacing_kji[1:], config, rng))
                steps_mm.append(run[1])
        all_x = torch.cat([x, *runs]).to(device)
        predictions = regressor(all_x)
        supervised = F.smooth_l1_loss(predictions[: len(x)], target.to(device), beta=0.02)
        loss = supervised
        ss = torch.zeros((), device=predictions.device)
        if runs:
            ss = self_supervised_loss(
                predictions[len(x) :].view(len(runs), training.run_length),
                torch.tensor(steps_mm, dtype=predictions.dtype, device=predictions.device),
            )
            loss = loss + training.self_supervised_weight * ss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        sums += (float(supervised.detach()), float(ss.detach()))
        if step % 50 == 0 or step == training.steps:
            row = {
                "step": step,
                "supervised": sums[0] / 50,
                "self_supervised": sums[1] / 50,
                "seconds": time.perf_counter() - start,
            }
            history.append(row)
            sums[:] = 0
            if log is not None:
                log(
                    f"step {step}: supervised {row['supervised']:.4f} "
                    f"self-supervised {row['self_supervised']:.4f}"
                )
    regressor.cpu().eval().requires_grad_(False)
    return regressor, history


def validation_error(regressor: PositionRegressor, volumes: list[TrainingVolume]) -> float:
    """Median absolute error of single-slice estimates on phantoms with known positions (no augmentation)."""
    errors = []
    with torch.no_grad():
        for volume in volumes:
            if volume.truth is None:
                continue
            x = regressor_input(volume.hu, volume.spacing_kji[1:], regressor.config)
            errors.append(np.abs(regressor(x).numpy() - volume.truth))
    if not errors:
        raise ConfigError("validation needs at least one volume with known positions")
    return float(np.median(np.concatenate(errors)))


def training_summary(volumes: list[TrainingVolume], training: TrainingConfig) -> dict[str, object]:
    """What the regressor was trained on, for the JSON header of its file."""
    return {
        **asdict(training),
        "phantoms": sum(v.truth is not None for v in volumes),
        "real_volumes": [v.name for v in volumes if v.truth is None],
    }
