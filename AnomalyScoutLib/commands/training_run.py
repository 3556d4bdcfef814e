"""What every training command does around its trainer: CPU threads, the device, and a run that Ctrl-C stops.

``train-gan``, ``train-encoder``, ``position-train`` (and the commands that train heads on a model) differ in
what they train, not in how a run starts and stops: ``--threads`` and ``--device``
(:func:`add_training_device_arguments`, part of :func:`add_runtime_arguments` in ``train_gan``) are applied
the same way (:func:`training_device`: CUDA, then MPS, then CPU), and Ctrl-C or SIGTERM asks the trainer to
stop at its next step, so that each command can then say what it kept (a checkpoint, nothing) and exit with
``EXIT_CANCELLED``.
Torch is imported inside the functions so that ``anomalyscout --help`` stays fast.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from AnomalyScoutLib.anomaly_map.data import NormalSlices
    from AnomalyScoutLib.cancellation import CancelFlag
    from AnomalyScoutLib.model_file import AnomalyModel
    from AnomalyScoutLib.train.placement import TrainingPlacement

__all__ = [
    "Trainer",
    "add_training_device_arguments",
    "chosen_placement",
    "model_training_slices",
    "train_until_done",
    "training_device",
]


class Trainer(Protocol):
    """A trainer runs until done (True) or until ``cancel`` is set (False), with or without a progress bar."""

    def train(self, cancel: CancelFlag | None = None, progress: bool = True) -> bool: ...


def add_training_device_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--threads`` (read by :func:`training_device`): one definition for every trainer."""
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps (default auto)",
    )
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")


def training_device(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads`` to torch and return the ``--device`` to train on."""
    import torch

    from AnomalyScoutLib.devices import select_device

    if args.threads:
        torch.set_num_threads(args.threads)
    return select_device(args.device)


def train_until_done(trainer: Trainer, args: argparse.Namespace) -> bool:
    """Train until done (True) or stopped by Ctrl-C or SIGTERM (False); a bar unless ``--no-progress``."""
    from AnomalyScoutLib.cancellation import CancelFlag, cancel_on_signals

    with cancel_on_signals(CancelFlag()) as flag:
        return trainer.train(flag, progress=not args.no_progress)


def chosen_placement(args: argparse.Namespace) -> TrainingPlacement | None:
    """``--position-regressor``'s placement, or None without it: read first, so that a bad file is one line
    before any work."""
    from AnomalyScoutLib.train.placement import load_placement

    return load_placement(args.position_regressor) if args.position_regressor else None


def model_training_slices(
    args: argparse.Namespace, model: AnomalyModel, chosen: TrainingPlacement | None
) -> tuple[NormalSlices, dict]:
    """The normal slices of ``--data`` on ``model``'s grid, placed as its training slices were (or as
    ``chosen``, :func:`chosen_placement`), and the record of that placement (with the slices the gate left
    out): what ``train-head`` and ``train-denoiser`` train a part of a model on."""
    from AnomalyScoutLib.anomaly_map.data import load_normal_slices
    from AnomalyScoutLib.train.data import list_volumes
    from AnomalyScoutLib.train.placement import recorded_placement

    placement = chosen or recorded_placement(
        model.metadata.get("training", {}).get("placement"), f"--model {args.model}", model.position_regressor
    )
    data = load_normal_slices(
        list_volumes(args.data),
        model.resolution,
        model.window,
        position_method=model.position_method,
        progress=not args.no_progress,
        regressor=placement.regressor,
    )
    placed = placement.record()
    if data.out_of_range is not None:
        placed["out_of_range_slices"] = data.out_of_range
    return data, placed
