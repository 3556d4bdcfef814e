"""A competent liver segmenter for the segmentation-failure track: MONAI's 2-D U-Net on normal phantom slices.

Why a second segmenter: the project's tiny U-Net (:mod:`AnomalyScoutLib.segmentation`) reached Dice 0.74 on
*normal* phantom livers, so its "failures" were mostly small liver tips and the track measured the U-Net, not
AnomalyScout. The question the track asks ("does the anomaly score say where a segmenter trained on normal
anatomy fails?") needs a segmenter that does not fail on normal anatomy: this one is trained with augmentation
(random rotation, scale, shift, intensity and noise) on the normal training phantoms, aiming at a mean Dice
≥ 0.95 on normal validation slices with enough liver (12 000 steps on one thread, 40 minutes, reached 0.936:
small inferior liver slices, whose boundary against bowel and kidney is faint in 2-D, are the weak part), and
the track then runs it on held-out anomalous cases.

Usage (repository root; checkpointed every minute and resumable; stops at the end of the ``--steps``
schedule or at ``--minutes``, whichever comes first)::

    nice -n 10 python -m benchmarks.monai_segmenter --threads 1 --minutes 60 --steps 12000 [--context 1]

MONAI is a benchmark extra (``pip install -e .[benchmark]``); the library never imports it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from AnomalyScoutLib import metrics
from AnomalyScoutLib.preprocessing import HUWindow
from benchmarks.data import WORK_DIR, phantom_case
from benchmarks.slices import SliceSet, concatenate

__all__ = [
    "SegmenterSpec",
    "augment_batch",
    "build_segmenter",
    "learning_rate",
    "NativeSegmentation",
    "load_segmenter",
    "min_liver_px_at",
    "neighbour_stack",
    "predict_liver",
    "segment_on_model_grid",
    "segmenter_images",
    "slice_dice",
    "train",
]


#: Normal phantom seeds of the segmenter: 24 to train on, 2 to choose the checkpoint. Six training phantoms
#: (the first run) reached validation Dice 0.936 but only 0.84 on some held-out phantoms: they did not cover
#: the generator's variety of liver shapes. All lie among the normal phantoms the generators train on
#: (1000-1039), far from every track's test seeds (5000+).
TRAIN_SEEDS: tuple[int, ...] = tuple(range(1000, 1024))
VAL_SEEDS: tuple[int, ...] = (1024, 1025)


class SegmenterSpec:
    """What defines one trained segmenter: its data and network (the checkpoint's cache key).

    Attributes:
        train_seeds: Normal phantom seeds trained on.
        val_seeds: Normal phantom seeds that choose the checkpoint (disjoint from the benchmark's test cases).
        resolution: In-plane model grid.
        window: HU window of the images (the anomaly model's, so both see the same slices).
        channels: U-Net widths per level. Half the widths of MONAI's usual 16-256: a phantom liver is one
            smooth, bright organ, and the half-width net takes 0.2 s per step of 16 slices on one thread
            against 0.5 s, so a CPU hour gives it 2.5 times the steps (the 16-256 net stopped at Dice 0.86
            after 400 steps).
        min_liver_px: Slices with fewer true liver pixels do not count in the validation Dice.
        context: neighbouring slices given each side (2.5-D input, ``2 * context + 1`` channels): a liver
            tip whose border against bowel and kidney is faint in one slice is plain in the stack.
    """

    def __init__(
        self,
        train_seeds: tuple[int, ...] = TRAIN_SEEDS,
        val_seeds: tuple[int, ...] = VAL_SEEDS,
        resolution: int = 128,
        window: HUWindow | None = None,
        channels: tuple[int, ...] = (8, 16, 32, 64, 128),
        min_liver_px: int = 50,
        context: int = 0,
    ):
        if set(train_seeds) & set(val_seeds):
            raise ValueError("training and validation seeds overlap")
        self.train_seeds = tuple(train_seeds)
        self.val_seeds = tuple(val_seeds)
        self.resolution = resolution
        self.window = window or HUWindow()
        self.channels = tuple(channels)
        self.min_liver_px = min_liver_px
        if context < 0:
            raise ValueError(f"context must be >= 0, got {context}")
        self.context = context

    def as_dict(self) -> dict[str, Any]:
        return {
            "network": "monai.networks.nets.UNet (2-D, residual units 2, batch norm)",
            "train_seeds": list(self.train_seeds),
            "val_seeds": list(self.val_seeds),
            "resolution": self.resolution,
            "window": [self.window.low, self.window.high],
            "channels": list(self.channels),
            "min_liver_px": self.min_liver_px,
            # only when set, so that the 2-D segmenter's checkpoint keeps its cache key
            **({"context": self.context} if self.context else {}),
        }

    @property
    def checkpoint(self) -> Path:
        key = hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:12]
        return WORK_DIR / "segfail" / f"monai-unet-{key}.pt"

    def slices(self, seeds: tuple[int, ...]) -> SliceSet:
        return concatenate([phantom_case(s, "normal", self.resolution, self.window) for s in seeds])


def _slice_keys(slices: SliceSet) -> list[tuple[str, int]]:
    """Each slice's (case name, slice index): what names a slice across slice sets of the same cases."""
    return [(slices.cases[c].name, int(k)) for c, k in zip(slices.case, slices.slice_index)]


def _rows_by_slice(slices: SliceSet) -> dict[tuple[str, int], int]:
    return {key: row for row, key in enumerate(_slice_keys(slices))}


def min_liver_px_at(resolution: int, model_grid_px: int = 50, model_grid: int = 128) -> int:
    """The area of ``model_grid_px`` model-grid pixels, in pixels at ``resolution``: what counts as
    "enough liver" on a finer grid."""
    return round(model_grid_px * (resolution / model_grid) ** 2)


def neighbour_stack(slices: SliceSet, context: int, source: SliceSet | None = None) -> np.ndarray:
    """``(n, 2 * context + 1, h, w)``: every slice of ``slices`` between its ``context`` neighbours below and
    above in its own case, taken from ``source`` (default: ``slices``; give the unstrided case when
    ``slices`` keeps every n-th slice). Past a case's ends, or where ``source`` lacks a slice, the nearest
    slice towards the centre stands in (edge replication)."""
    source = slices if source is None else source
    rows = _rows_by_slice(source)
    stack = np.empty((len(slices), 2 * context + 1, *slices.images.shape[1:]), dtype=np.float32)
    for i, (c, k) in enumerate(zip(slices.case, slices.slice_index)):
        name = slices.cases[c].name
        if (name, int(k)) not in rows:
            raise ValueError(f"slice {k} of {name} is not in the source set")
        for channel, offset in enumerate(range(-context, context + 1)):
            step = -1 if offset > 0 else 1
            while (name, int(k) + offset) not in rows:
                offset += step
            stack[i, channel] = source.images[rows[(name, int(k) + offset)]]
    return stack


def segmenter_images(spec: SegmenterSpec, slices: SliceSet, source: SliceSet | None = None) -> np.ndarray:
    """What the segmenter of ``spec`` reads: the slices themselves, or their neighbour stacks (2.5-D)."""
    return neighbour_stack(slices, spec.context, source) if spec.context else slices.images


class NativeSegmentation(NamedTuple):
    """Masks segmented on a finer grid than the model's, brought down to it."""

    model_grid: np.ndarray  # (n, res, res) on the model grid
    native: np.ndarray  # (n, R, R) as segmented
    native_truth: np.ndarray  # (n, R, R) the true liver at the segmenter's grid


def segment_on_model_grid(
    model: nn.Module, spec: SegmenterSpec, slices: SliceSet, native: SliceSet
) -> NativeSegmentation:
    """Liver masks of ``slices`` (on the model grid) by a segmenter that works at ``spec.resolution``.

    ``native`` holds the same cases at the segmenter's resolution, every slice (the 2.5-D neighbours come
    from it). Each slice is segmented there, and a model pixel is liver when at least half of its native
    pixels are: the rule that made the model grid's truth (``benchmarks.data.volume_slices``), so the two are
    compared like for like.

    Raises:
        ValueError: the grids are not multiples, or a slice is missing from ``native``.
    """
    factor, remainder = divmod(spec.resolution, slices.images.shape[-1])
    if remainder or factor < 1:
        raise ValueError(
            f"the segmenter's grid {spec.resolution} is not a multiple of {slices.images.shape[-1]}"
        )
    rows = _rows_by_slice(native)
    try:
        pick = np.array([rows[key] for key in _slice_keys(slices)])
    except KeyError as missing:
        raise ValueError(f"slice {missing.args[0]} is not in the native set") from None
    chosen = native.subset(pick)
    masks = predict_liver(model, segmenter_images(spec, chosen, native))
    n, size = len(masks), slices.images.shape[-1]
    share = masks.reshape(n, size, factor, size, factor).mean(axis=(2, 4))
    return NativeSegmentation(share >= 0.5, masks, chosen.organ)


def build_segmenter(channels: tuple[int, ...] = (8, 16, 32, 64, 128), in_channels: int = 1) -> nn.Module:
    """MONAI's residual 2-D U-Net: ``in_channels`` inputs (the slice, or its neighbour stack), one output
    logit (liver)."""
    from monai.networks.nets import UNet  # a benchmark extra: imported only where used

    return UNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=1,
        channels=channels,
        strides=(2,) * (len(channels) - 1),
        num_res_units=2,
        norm="batch",
    )


def augment_batch(
    images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rotation (±15°), scale (0.85–1.15), shift (±8 %), contrast/brightness and noise, batched.

    Done on the whole ``(n, 1, h, w)`` batch with one ``grid_sample`` (per-sample MONAI transforms cost more
    CPU than the network at this size). No flips: the liver lies on the patient's right. Outside the image is
    air (-1), masks are resampled bilinearly and re-thresholded.
    """
    n = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    angle = uniform(-math.pi / 12, math.pi / 12)
    scale = uniform(0.85, 1.15)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, uniform(-0.16, 0.16)], 1), torch.stack([sin, cos, uniform(-0.16, 0.16)], 1)],
        1,
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    moved = F.grid_sample(images + 1.0, grid, align_corners=False) - 1.0
    moved_masks = (F.grid_sample(masks, grid, align_corners=False) > 0.5).float()
    contrast = uniform(0.9, 1.1).view(n, 1, 1, 1)
    brightness = uniform(-0.1, 0.1).view(n, 1, 1, 1)
    noise = uniform(0.0, 0.05).view(n, 1, 1, 1) * torch.randn(moved.shape, generator=generator)
    return (moved * contrast + brightness + noise).clamp(-1.0, 1.0), moved_masks


@torch.no_grad()
def predict_liver(model: nn.Module, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Boolean liver mask ``(n, h, w)`` (sigmoid > 0.5) of ``(n, h, w)`` slices or ``(n, c, h, w)`` neighbour
    stacks in [-1, 1]."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.as_tensor(images[start : start + batch_size], dtype=torch.float32)
        batch = batch.unsqueeze(1) if batch.ndim == 3 else batch
        out.append((model(batch)[:, 0] > 0).numpy())
    return np.concatenate(out) if out else np.zeros((0, *images.shape[-2:]), dtype=bool)


def slice_dice(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-slice Dice of boolean ``(n, h, w)`` masks (``metrics.dice``: 1.0 when both are empty)."""
    return np.array([metrics.dice(p, t) for p, t in zip(prediction, truth)])


def _validation_dice(model: nn.Module, val: SliceSet, val_images: np.ndarray, min_liver_px: int) -> float:
    keep = val.organ.reshape(len(val), -1).sum(axis=1) >= min_liver_px
    return float(slice_dice(predict_liver(model, val_images[keep]), val.organ[keep]).mean())


def learning_rate(step: int, steps: int, peak: float, warmup: int = 200) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 2 % of ``peak`` at ``steps``.

    A function of the step alone, so a resumed run continues the same schedule. The decay is what turns a
    net that finds the liver into one that places its boundary to the pixel (Dice on a 600-pixel liver
    loses 0.05 to a one-pixel rim error).
    """
    ramp = min(1.0, (step + 1) / warmup)
    progress = min(1.0, step / max(steps, 1))
    return peak * ramp * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _save(state: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    temporary.replace(path)


def train(
    spec: SegmenterSpec,
    minutes: float,
    steps: int = 12000,
    batch_size: int = 16,
    lr: float = 2e-3,
    val_every: int = 200,
    seed: int = 0,
    log=print,  # noqa: ANN001 - any print-like callable
    init: Path | None = None,
) -> dict[str, Any]:
    """Train (or resume) the segmenter of ``spec`` up to step ``steps`` (the end of the learning-rate
    schedule) or for at most ``minutes`` of wall time, whichever comes first, checkpointing.

    ``init``: a fresh run starts from the best weights of this checkpoint (the same network at another
    resolution: a U-Net is fully convolutional, so one trained on the 128² model grid is a good start at the
    phantom's native 256², where a liver's border is drawn twice as finely).

    Batches draw three quarters of their slices from those holding liver (a phantom volume is mostly
    liver-free, and Dice on the liver is the point) and the rest from all slices, so that the net also
    learns to say "no liver". The checkpoint keeps the running state and the best state by validation Dice.
    """
    from monai.losses import DiceCELoss

    torch.manual_seed(seed)
    model = build_segmenter(spec.channels, 2 * spec.context + 1)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    state: dict[str, Any] = {"step": 0, "best_dice": -1.0, "best_step": 0, "history": [], "wall_s": 0.0}
    if spec.checkpoint.is_file():
        state = torch.load(spec.checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        log(f"resumed at step {state['step']} (best Dice {state['best_dice']:.4f})")
    elif init is not None:
        start = torch.load(init, weights_only=True)
        model.load_state_dict(start.get("best_model", start["model"]))
        log(f"starting from the weights of {init}")
    train_set, val = spec.slices(spec.train_seeds), spec.slices(spec.val_seeds)
    stacked = segmenter_images(spec, train_set)
    images = torch.from_numpy(stacked if stacked.ndim == 4 else stacked[:, None])
    val_images = segmenter_images(spec, val)
    masks = torch.from_numpy(train_set.organ.astype(np.float32)).unsqueeze(1)
    with_liver = torch.from_numpy(np.flatnonzero(train_set.organ.reshape(len(train_set), -1).any(axis=1)))
    generator = torch.Generator().manual_seed(seed + state["step"])
    loss_fn = DiceCELoss(sigmoid=True, batch=True)
    started, last_save = time.time(), time.time()
    while state["step"] < steps and time.time() - started < minutes * 60:
        model.train()
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(state["step"], steps, lr)
        n_liver = batch_size * 3 // 4
        pick = torch.cat(
            [
                with_liver[torch.randint(len(with_liver), (n_liver,), generator=generator)],
                torch.randint(len(images), (batch_size - n_liver,), generator=generator),
            ]
        )
        x, y = augment_batch(images[pick], masks[pick], generator)
        loss = loss_fn(model(x), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        state["step"] += 1
        if state["step"] % val_every == 0:
            dice = _validation_dice(model, val, val_images, spec.min_liver_px)
            state["history"].append([state["step"], loss.item(), dice])
            rate = optimiser.param_groups[0]["lr"]
            log(f"step {state['step']} lr {rate:.2e} loss {loss.item():.4f} val Dice {dice:.4f}")
            if dice > state["best_dice"]:
                # A copy: state_dict() shares the live parameters, which the next steps would overwrite.
                best = {name: value.detach().clone() for name, value in model.state_dict().items()}
                state.update(best_dice=dice, best_step=state["step"], best_model=best)
        if time.time() - last_save > 60:
            state.update(model=model.state_dict(), optimiser=optimiser.state_dict())
            _save({**state, "wall_s": state["wall_s"] + time.time() - last_save}, spec.checkpoint)
            state["wall_s"] += time.time() - last_save
            last_save = time.time()
    state.update(model=model.state_dict(), optimiser=optimiser.state_dict())
    state["wall_s"] += time.time() - last_save
    _save(state, spec.checkpoint)
    best = f"best val Dice {state['best_dice']:.4f} at step {state['best_step']}"
    log(f"stopped at step {state['step']}; {best}")
    return state


def load_segmenter(spec: SegmenterSpec) -> tuple[nn.Module, dict[str, Any]]:
    """The best checkpointed model of ``spec`` (by validation Dice) and its training summary."""
    if not spec.checkpoint.is_file():
        raise FileNotFoundError(
            f"no trained segmenter at {spec.checkpoint}: run `python -m benchmarks.monai_segmenter` first"
        )
    state = torch.load(spec.checkpoint, weights_only=True)
    model = build_segmenter(spec.channels, 2 * spec.context + 1)
    model.load_state_dict(state.get("best_model", state["model"]))
    model.eval()
    summary = {k: state[k] for k in ("step", "best_dice", "best_step", "wall_s")}
    return model, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="wall-time budget of this run")
    parser.add_argument("--steps", type=int, default=12000, help="end of the learning-rate schedule")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--context", type=int, default=0, help="neighbouring slices each side (1: a 3-slice 2.5-D stack)"
    )
    parser.add_argument("--resolution", type=int, default=128, help="in-plane grid (256: the phantom's own)")
    parser.add_argument(
        "--init", type=Path, default=None, help="start a new run from this checkpoint's best weights"
    )
    args = parser.parse_args(argv)
    if args.init is not None and not args.init.is_file():
        print(f"monai_segmenter: no checkpoint {args.init}", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    # "enough liver" is the same area at every resolution: 50 pixels of the 128² grid
    spec = SegmenterSpec(
        context=args.context, resolution=args.resolution, min_liver_px=min_liver_px_at(args.resolution)
    )
    print(f"[segmenter] checkpoint {spec.checkpoint}", flush=True)
    train(
        spec,
        args.minutes,
        args.steps,
        batch_size=args.batch,
        lr=args.lr,
        log=lambda m: print(f"[segmenter] {m}", flush=True),
        init=args.init,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
