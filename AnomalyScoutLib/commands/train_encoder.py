"""``anomalyscout train-encoder``: train the encoder of a GAN run and write the one-file model.

    anomalyscout train-encoder --gan RUN --out MODEL.safetensors [--data DIR_OR_LIST] [--kimg N] [--kappa K]
                               [--init OLD_MODEL.safetensors] [--offset-scale S] [--single-w]

The GAN run's EMA generator and discriminator stay frozen. --data defaults to the GAN's training data. The
model file (generator + encoder + discriminator, float16 unless --float32) is written atomically at the end,
also when --max-minutes stops training early; Ctrl-C writes nothing and exits with code 130. --init starts
from the encoder of an earlier model of the same architecture (after the GAN trained further), which needs
far fewer steps than a fresh encoder. --offset-scale and --single-w narrow the trained encoder's code space
before the file is written (``Encoder.constrain``): a generator that can draw a lesion draws it back into the
reconstruction when the code lets it, so a code held nearer the typical slice at its position separates
anomalies better (``python -m benchmarks.code_space``, docs/training.md).

The slices are placed as the GAN's were (its run records it: by index, or by anatomy with a
--position-regressor); --position-regressor FILE places them by anatomy with FILE's regressor instead. The
model file records the placement in ``training.placement``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from AnomalyScoutLib.cli import EXIT_CANCELLED, add_command_parser
from AnomalyScoutLib.commands.train_gan import add_position_regressor_argument, add_runtime_arguments
from AnomalyScoutLib.commands.training_run import train_until_done, training_device

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command_parser(
        subparsers,
        "train_encoder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--gan", type=Path, required=True, help="train-gan run folder")
    parser.add_argument("--out", type=Path, required=True, help="model file to write (.safetensors)")
    parser.add_argument("--data", help="volumes (folder or list; default: the GAN's training data)")
    parser.add_argument(
        "--kimg", type=float, default=20.0, help="thousands of slices to train on (default 20)"
    )
    parser.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    parser.add_argument("--lr", type=float, default=0.002, help="Adam learning rate (default 0.002)")
    parser.add_argument(
        "--kappa", type=float, default=1.0, help="weight of the D-feature residual (default 1)"
    )
    parser.add_argument("--latent-weight", type=float, default=0.01, help="weight of the latent regulariser")
    parser.add_argument("--synthetic-weight", type=float, default=1.0, help="weight of the known-code loss")
    parser.add_argument(
        "--generator-lr",
        type=float,
        default=0.0,
        help="also tune the generator's synthesis network on the reconstruction loss at this learning rate "
        "(default 0: frozen generator)",
    )
    parser.add_argument("--max-minutes", type=float, default=0.0, help="stop after this long (0 = no limit)")
    parser.add_argument(
        "--init", type=Path, help="start from this model file's encoder (same architecture), not a fresh one"
    )
    add_code_space_arguments(parser)
    add_position_regressor_argument(parser, "as the GAN run placed its slices")
    parser.add_argument("--float32", action="store_true", help="store float32 weights (default float16)")
    add_runtime_arguments(parser)
    parser.set_defaults(func=run)


def add_code_space_arguments(
    parser: argparse.ArgumentParser, offset_scale: float = 1.0, single_w: bool = False
) -> None:
    """How far the trained encoder's codes may stray from the typical slice (shared with ``train``, whose
    defaults are the shipped model's narrowing)."""
    parser.add_argument(
        "--offset-scale",
        type=float,
        default=offset_scale,
        help="scale the encoder's offsets from the mean latent at the slice's position after training "
        f"(default {offset_scale:g}; 1 = as trained, < 1 keeps lesions out of the reconstruction: "
        "docs/training.md)",
    )
    parser.add_argument(
        "--single-w",
        action=argparse.BooleanOptionalAction,
        default=single_w,
        help=f"one w for all synthesis layers (W instead of W+) after training (default: {single_w})",
    )


def run(args: argparse.Namespace) -> int:
    from AnomalyScoutLib.errors import ConfigError
    from AnomalyScoutLib.train.data import list_volumes, load_slices
    from AnomalyScoutLib.train.encoder import (
        EncoderOptions,
        EncoderTrainer,
        load_gan_run,
        narrow_code_space,
        training_metadata,
        warm_start_encoder,
    )
    from AnomalyScoutLib.train.placement import load_placement, recorded_placement

    if not args.out.parent.is_dir():
        raise ConfigError(f"--out: folder {args.out.parent} does not exist")
    if args.offset_scale < 0:
        raise ConfigError(f"--offset-scale must be >= 0, got {args.offset_scale}")
    options = EncoderOptions(
        kimg=args.kimg,
        batch=args.batch,
        lr=args.lr,
        kappa=args.kappa,
        latent_weight=args.latent_weight,
        synthetic_weight=args.synthetic_weight,
        generator_lr=args.generator_lr,
        max_minutes=args.max_minutes,
        seed=args.seed,
    )
    device = training_device(args)
    chosen = load_placement(args.position_regressor) if args.position_regressor else None
    gan = load_gan_run(args.gan)
    placement = chosen or recorded_placement(gan.settings.get("placement"), f"the GAN run {args.gan}")
    data = load_slices(
        list_volumes(args.data or gan.settings["data_source"]),
        gan.model.resolution,
        gan.model.window,
        min_body_fraction=gan.settings.get("min_body_fraction", 0.05),
        progress=not args.no_progress,
        regressor=placement.regressor,
    )
    print(f"train-encoder: {len(data)} slices, {placement.describe()}", file=sys.stderr)
    initial = warm_start_encoder(gan.model, args.init) if args.init else None
    trainer = EncoderTrainer(gan.model, options, data, device)
    if not train_until_done(trainer, args):
        print("cancelled: no model file was written", file=sys.stderr)
        return EXIT_CANCELLED
    model = gan.model
    model.metadata["training"] = training_metadata(gan, trainer, data, placement.record())
    if initial is not None:
        model.metadata["training"]["encoder"]["initialised_from"] = initial
    narrow_code_space(model, args.offset_scale, args.single_w)
    model.save(args.out, half=not args.float32)
    print(f"wrote {args.out} ({model.model_id}, {args.out.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
    return 0
