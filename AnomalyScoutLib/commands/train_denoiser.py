"""``anomalyscout train-denoiser``: train a model's coarse-noise denoiser on normal volumes, resumable.

    anomalyscout train-denoiser --model MODEL.safetensors --data DIR_OR_LIST --run FOLDER
                                --out MODEL_WITH_DENOISER.safetensors [--steps N] [--max-minutes M]

The denoiser (``AnomalyScoutLib/denoiser.py``) is a U-Net that learns to remove noise drawn on a coarse grid
from normal slices; its residual is a second calibrated opinion beside the model's own score. --data are
normal CT volumes (the model's own training volumes are the natural choice), placed as the model's training
slices were. --run receives ``checkpoint.safetensors`` every few minutes and ``log.csv``; run the same
command again to continue a run (--steps is the run's total, --max-minutes this invocation's limit; the
schedule, --lr, --lr-halflife and --grad-clip, may change: a run that diverged stops with its last sound
checkpoint kept, and goes on from it at a lower rate). The
output is the input model with the denoiser added (any earlier one replaced; its calibration dropped, the
model's own kept: run ``anomalyscout calibrate`` to calibrate the denoiser). Ctrl-C writes the checkpoint
and no model file, and exits with code 130.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from AnomalyScoutLib.cli import EXIT_CANCELLED, add_command_parser
from AnomalyScoutLib.commands.train_gan import add_position_regressor_argument, add_runtime_arguments

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command_parser(
        subparsers,
        "train_denoiser",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, required=True, help="model file to add the denoiser to")
    parser.add_argument("--data", required=True, help="normal volumes (folder, phantom folder or list)")
    parser.add_argument("--run", type=Path, required=True, help="folder for the checkpoint and log.csv")
    parser.add_argument("--out", type=Path, required=True, help="model file to write (.safetensors)")
    parser.add_argument("--steps", type=int, default=20000, help="the run's total steps (default 20000)")
    parser.add_argument("--max-minutes", type=float, default=0.0, help="stop this invocation after this long")
    parser.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate at step 0 (default 0.001)")
    halflife_help = "steps over which the rate halves (default 10000; 0: constant)"
    parser.add_argument("--lr-halflife", type=int, default=10000, help=halflife_help)
    parser.add_argument("--grad-clip", type=float, default=1.0, help="largest gradient norm (0: off)")
    parser.add_argument("--channels", type=int, nargs="+", default=[24, 48, 96, 192], help="U-Net widths")
    parser.add_argument("--coarse", type=int, default=16, help="side of the noise grid (default 16)")
    parser.add_argument("--sigma", type=float, default=0.4, help="noise level in window units (default 0.4)")
    grids_help = "noise grid sides, one drawn per step (default: --coarse's)"
    parser.add_argument("--noise-grids", type=int, nargs="+", default=[], help=grids_help)
    parser.add_argument("--float32", action="store_true", help="store float32 networks (default float16)")
    add_position_regressor_argument(parser, "as the model's training slices were placed")
    add_runtime_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from AnomalyScoutLib.commands.training_run import (
        chosen_placement,
        model_training_slices,
        train_until_done,
        training_device,
    )
    from AnomalyScoutLib.denoiser import Denoiser, DenoiserConfig
    from AnomalyScoutLib.errors import ConfigError
    from AnomalyScoutLib.model_file import AnomalyModel
    from AnomalyScoutLib.train.denoiser import DenoiserTrainer, DenoiserTrainingOptions, attach_denoiser

    device = training_device(args)
    if not args.out.parent.is_dir():
        raise ConfigError(f"--out: folder {args.out.parent} does not exist")
    config = DenoiserConfig(channels=tuple(args.channels), coarse=args.coarse, sigma=args.sigma)
    options = DenoiserTrainingOptions(
        steps=args.steps, batch=args.batch, lr=args.lr, lr_halflife=args.lr_halflife,
        grad_clip=args.grad_clip, noise_grids=tuple(args.noise_grids), max_minutes=args.max_minutes,
        seed=args.seed,
    )  # fmt: skip
    chosen = chosen_placement(args)
    model = AnomalyModel.load(args.model, "cpu")
    data, placed = model_training_slices(args, model, chosen)
    torch.manual_seed(args.seed)
    trainer = DenoiserTrainer(Denoiser(config), data, options, device, run_folder=args.run)
    if trainer.resume():
        print(f"resuming {args.run} at step {trainer.step}", file=sys.stderr)
    if not train_until_done(trainer, args):
        print(f"cancelled at step {trainer.step}: checkpoint in {args.run}, no model", file=sys.stderr)
        return EXIT_CANCELLED
    record = {"data": str(args.data), "model": str(args.model), "placement": placed}
    attach_denoiser(model, trainer.denoiser, {**trainer.summary(), **record})
    model.save(args.out, half=not args.float32)
    print(
        f"wrote {args.out} ({model.model_id}): denoiser at step {trainer.step} of {options.steps}, "
        f"loss {trainer.last_loss:.5f}",
        file=sys.stderr,
    )
    return 0
