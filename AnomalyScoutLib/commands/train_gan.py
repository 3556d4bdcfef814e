"""``anomalyscout train-gan``: train the position-conditioned StyleGAN2 on normal CT volumes.

    anomalyscout train-gan --data VOLUMES_DIR_OR_LIST --res 128 --out RUN [--config cpu-small] [--kimg N]
    anomalyscout train-gan --out RUN --resume [--kimg N]          # continue (optionally longer)
    torchrun --nproc_per_node 4 -m AnomalyScoutLib train-gan ...  # data-parallel on 4 GPUs (or CPU/gloo)

RUN receives training_options.json, log.csv, samples/*.png and checkpoint.safetensors (every
--checkpoint-every seconds and at the end). Ctrl-C writes a checkpoint and exits with code 130; --resume
continues from it exactly. Then train the encoder: ``anomalyscout train-encoder --gan RUN --out MODEL``.

--position-regressor FILE places each volume's slices by anatomy (as `score` does) instead of by index over
its scanned range, and leaves out the slices outside the model's range: needed for real CT that does not run
from the pelvis floor to the lung bases. The run records it; a resumed run and `train-encoder` on it place
alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from AnomalyScoutLib.cli import EXIT_CANCELLED, add_command_parser
from AnomalyScoutLib.commands.training_run import add_training_device_arguments
from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.nets.architecture import PRESETS, ArchitectureConfig, preset

if TYPE_CHECKING:
    from AnomalyScoutLib.train.placement import TrainingPlacement

__all__ = ["add_position_regressor_argument", "add_runtime_arguments", "parse_window", "register", "run"]


def parse_window(text: str) -> tuple[float, float]:
    """``"-250,350"`` -> (-250.0, 350.0) for ``--hu-window``."""
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hu-window must be LOW,HIGH in HU, got {text!r}") from None
    return low, high


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every training command shares: device, CPU threads, seed and the progress bar."""
    add_training_device_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_position_regressor_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """``--position-regressor FILE`` of every training command; ``default`` says what it is without it."""
    parser.add_argument(
        "--position-regressor",
        type=Path,
        metavar="FILE",
        help="place the training slices by anatomy with this body-part regressor (a position-train file or a "
        f"model file holding one) and leave out those outside the model's range (default: {default})",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command_parser(
        subparsers,
        "train_gan",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data", help="folder of volumes (NIfTI/NRRD/MHA/DICOM folders) or a text list of paths"
    )
    parser.add_argument("--out", type=Path, required=True, help="run folder (created; checkpoints and logs)")
    parser.add_argument("--res", type=int, default=128, help="image resolution (default 128)")
    parser.add_argument(
        "--config",
        help="architecture preset: 64, 128, 256, 512, cpu-small or cpu-mid (default: the one named by --res)",
    )
    parser.add_argument("--unconditional", action="store_true", help="ignore the slice position (baseline)")
    parser.add_argument("--kimg", type=float, help="thousands of real images to train on (default 50)")
    parser.add_argument("--batch", type=int, default=16, help="total batch size (default 16)")
    parser.add_argument("--lr", type=float, default=0.002, help="Adam learning rate (default 0.002)")
    parser.add_argument("--r1-gamma", type=float, default=1.0, help="R1 weight (default 1)")
    parser.add_argument("--pl-weight", type=float, default=0.0, help="path-length weight (default 0 = off)")
    parser.add_argument("--augment", default="color,translation,cutout", help="DiffAugment policy or 'none'")
    parser.add_argument("--hu-window", type=parse_window, default=(-250.0, 350.0), help="LOW,HIGH (HU)")
    parser.add_argument("--min-body-fraction", type=float, default=0.05, help="skip slices with less body")
    parser.add_argument("--sample-every", type=float, default=2.0, help="kimg between sample grids")
    parser.add_argument("--checkpoint-every", type=float, default=180.0, help="seconds between checkpoints")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="bf16 autocast of the G and D passes (auto: bf16 on CUDA, fp32 elsewhere; bf16 pays on CPUs "
        "with bf16 units for wide networks)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the G and D passes (eager if it fails)"
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    add_position_regressor_argument(parser, "by index; a resumed run keeps its own placement")
    add_runtime_arguments(parser)
    parser.set_defaults(func=run)


def _architecture(config: str, *, conditional: bool) -> ArchitectureConfig:
    """A preset by name, or an architecture JSON file (for experiments and tiny test networks)."""
    if config in PRESETS:
        return preset(config, conditional=conditional)
    path = Path(config)
    if not path.is_file():
        raise ConfigError(f"--config {config!r} is neither a preset ({', '.join(PRESETS)}) nor a JSON file")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"--config {path}: cannot read it as JSON ({error})") from None
    return dataclasses.replace(ArchitectureConfig.from_dict(data), conditional=conditional)


def _fresh_settings(args: argparse.Namespace) -> dict[str, Any]:
    from AnomalyScoutLib.train.gan import GanOptions

    if not args.data:
        raise ConfigError("--data is required (unless --resume)")
    architecture = _architecture(args.config or str(args.res), conditional=not args.unconditional)
    if architecture.resolution != args.res:
        raise ConfigError(
            f"--config {args.config} is a {architecture.resolution} px model, not --res {args.res}"
        )
    options = GanOptions(
        kimg=args.kimg or 50.0,
        batch=args.batch,
        lr=args.lr,
        r1_gamma=args.r1_gamma,
        pl_weight=args.pl_weight,
        augment=args.augment,
        sample_every_kimg=args.sample_every,
        checkpoint_every_s=args.checkpoint_every,
        seed=args.seed,
        precision=args.precision,
        compile=args.compile,
    )
    return {
        "architecture": architecture.to_dict(),
        "options": dataclasses.asdict(options),
        "data_source": str(Path(args.data).resolve()),
        "preprocessing": {"hu_window": list(args.hu_window), "position": "index"},
        "min_body_fraction": args.min_body_fraction,
    }


def _placement(args: argparse.Namespace, settings: dict[str, Any]) -> TrainingPlacement:
    """The run's placement: ``--position-regressor`` for a fresh run; a resumed run keeps the recorded one."""
    from AnomalyScoutLib.train.placement import (
        INDEX,
        load_placement,
        recorded_placement,
        require_same_placement,
    )

    if not args.resume:
        return load_placement(args.position_regressor) if args.position_regressor else INDEX
    what = f"--resume: the run in {args.out}"
    if args.position_regressor:
        placement = load_placement(args.position_regressor)
        require_same_placement(placement, settings.get("placement"), what)
        return placement
    return recorded_placement(settings.get("placement"), what)


def _saved_settings(args: argparse.Namespace) -> dict[str, Any]:
    path = args.out / "training_options.json"
    if not path.is_file():
        raise ConfigError(f"--resume: {path} does not exist (is {args.out} a train-gan run folder?)")
    settings = json.loads(path.read_text())
    if args.kimg:
        settings["options"]["kimg"] = args.kimg
    # How the passes are executed may change between work periods (a GPU today, CPU tomorrow); what is trained
    # may not.
    if args.precision != "auto":
        settings["options"]["precision"] = args.precision
    if args.compile:
        settings["options"]["compile"] = True
    return settings


def run(args: argparse.Namespace) -> int:
    import torch

    from AnomalyScoutLib.atomic import write_bytes_atomic
    from AnomalyScoutLib.commands.training_run import train_until_done, training_device
    from AnomalyScoutLib.preprocessing import HUWindow
    from AnomalyScoutLib.train.data import list_volumes, load_slices
    from AnomalyScoutLib.train.ddp import init_distributed
    from AnomalyScoutLib.train.gan import GanOptions, GanTrainer

    settings = _saved_settings(args) if args.resume else _fresh_settings(args)
    placement = _placement(args, settings)
    settings["placement"] = placement.record()
    architecture = ArchitectureConfig.from_dict(settings["architecture"])
    options = GanOptions(**settings["options"])
    window = HUWindow.from_dict(settings["preprocessing"])
    device = training_device(args)
    info = init_distributed(device)
    if device.type == "cuda" and info.active:
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_slices(
        list_volumes(settings["data_source"]),
        architecture.resolution,
        window,
        min_body_fraction=settings["min_body_fraction"],
        progress=info.is_main and not args.no_progress,
        regressor=placement.regressor,
    )
    trainer = GanTrainer(architecture, options, data, args.out, device, info)
    if args.resume:
        trainer.resume()
    settings["data"] = data.summary()
    if info.is_main:
        write_bytes_atomic(args.out / "training_options.json", json.dumps(settings, indent=2).encode())
        print(
            f"train-gan: {len(data)} slices from {len(data.sources)} volumes, {architecture.resolution} px, "
            f"device {device}, {info.world_size} process(es), {options.kimg} kimg; {placement.describe()}",
            file=sys.stderr,
        )
    if not train_until_done(trainer, args):
        if info.is_main:
            print(
                f"interrupted at {trainer.images_seen / 1000:.1f} kimg: checkpoint written to {args.out}; "
                "continue with --resume",
                file=sys.stderr,
            )
        return EXIT_CANCELLED
    return 0
