"""``anomalyscout position-train``: train the body-part regressor that places slices on the anatomical scale.

    anomalyscout position-train --out POSITION.safetensors [--phantoms 24] [--real CT ...] [--steps 2000]
        [--device auto] [--threads N]

Supervised on normal phantoms (their slice positions are the scale: pelvis floor 0, lung bases 1) and
self-supervised (slice order and spacing, no labels) on the phantoms and on every --real CT, with strong
augmentation. Writes a standalone regressor file (atomically, at the end); put it into a model file with
``anomalyscout attach-position``. A few minutes on two CPU cores; ``--device`` and ``--threads`` as in every
training command (default: CUDA, then MPS, then CPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from AnomalyScoutLib.cli import add_command_parser
from AnomalyScoutLib.commands.training_run import add_training_device_arguments

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command_parser(
        subparsers,
        "position_train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="regressor file to write (.safetensors)")
    parser.add_argument("--phantoms", type=int, default=24, help="training phantoms (default 24)")
    parser.add_argument("--validation-phantoms", type=int, default=4, help="held-out phantoms (default 4)")
    parser.add_argument("--real", type=Path, nargs="*", default=[], help="real CT volumes (self-supervised)")
    parser.add_argument("--steps", type=int, default=2000, help="optimisation steps (default 2000)")
    parser.add_argument("--batch", type=int, default=48, help="phantom slices per step (default 48)")
    parser.add_argument(
        "--real-run-share",
        type=float,
        default=0.5,
        help="share of the self-supervised runs taken from the --real volumes (default 0.5)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of phantoms, sampling and weights")
    add_training_device_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from AnomalyScoutLib.commands.training_run import training_device
    from AnomalyScoutLib.errors import ConfigError
    from AnomalyScoutLib.position.network import RegressorConfig
    from AnomalyScoutLib.position.store import save_regressor
    from AnomalyScoutLib.position.training import (
        TrainingConfig,
        phantom_volumes,
        real_volume,
        train_regressor,
        training_summary,
        validation_error,
    )

    device = training_device(args)
    if not args.out.parent.is_dir():
        raise ConfigError(f"--out: folder {args.out.parent} does not exist")
    if args.phantoms < 1 or args.validation_phantoms < 1:
        raise ConfigError("--phantoms and --validation-phantoms must be at least 1")
    training = TrainingConfig(
        steps=args.steps, batch=args.batch, real_run_share=args.real_run_share, seed=args.seed
    )
    rng = np.random.default_rng(args.seed)
    base = 100_000 + 1000 * args.seed  # seeds apart from the GAN's training and benchmark phantoms
    print(
        f"making {args.phantoms} + {args.validation_phantoms} phantoms; training on {device}", file=sys.stderr
    )
    volumes = phantom_volumes(range(base, base + args.phantoms), rng)
    held_out = phantom_volumes(
        range(base + args.phantoms, base + args.phantoms + args.validation_phantoms), rng
    )
    volumes += [real_volume(path) for path in args.real]
    regressor, history = train_regressor(
        volumes, RegressorConfig(), training, log=lambda line: print(line, file=sys.stderr), device=device
    )
    error = validation_error(regressor, held_out)
    config = RegressorConfig.from_dict({**regressor.config.to_dict(), "slice_error": round(error, 4)})
    regressor.config = config
    info = {
        "training": {
            **training_summary(volumes, training),
            "seconds": history[-1]["seconds"],
            "device": str(device),
        },
        "validation": {"phantoms": args.validation_phantoms, "median_slice_error": error},
    }
    save_regressor(args.out, regressor, info)
    print(f"wrote {args.out}: median single-slice error {error:.3f} on held-out phantoms", file=sys.stderr)
    return 0
