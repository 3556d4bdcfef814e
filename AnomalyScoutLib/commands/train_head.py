"""``anomalyscout train-head``: train the anomaly-map head of a model on normal volumes and write the model.

    anomalyscout train-head --model MODEL.safetensors --data DIR_OR_LIST --out MODEL_WITH_HEAD.safetensors
                            [--run FOLDER] [--steps N] [--max-minutes M] [--holdout FAMILY]
                            [--no-reconstruction] [--no-position] [--channels 8 16 32]

The model's generator and encoder stay frozen: they make the fast-mode reconstructions the head learns to
compare with. --data are normal CT volumes (the model's own training volumes are the natural choice); the
last --validation-volumes of them are kept for validation on the held-out synthesis family. The output is
the input model with the head added (``head.*`` tensors, float32; the networks float16 unless --float32;
any earlier head replaced; the calibration dropped, since the slice score changes: run ``anomalyscout
calibrate``). --run receives ``log.csv`` and the best checkpoint as training goes.
Ctrl-C writes nothing and exits with code 130.

The slices are placed as the model's own training slices were (``training.placement``: by index, or by
anatomy with the regressor it names, taken from the model file itself when it holds that one);
--position-regressor FILE places them by anatomy with FILE's regressor instead. The head's training record
says which (``head.training.placement``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from AnomalyScoutLib.cli import EXIT_CANCELLED, add_command_parser
from AnomalyScoutLib.commands.train_gan import add_position_regressor_argument, add_runtime_arguments

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    from AnomalyScoutLib.anomaly_map.synthesis import FAMILIES

    parser = add_command_parser(
        subparsers, "train_head", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, required=True, help="model file whose reconstructions the head uses"
    )
    parser.add_argument("--data", required=True, help="normal volumes (folder, phantom folder or list)")
    parser.add_argument("--out", type=Path, required=True, help="model file to write (.safetensors)")
    parser.add_argument("--run", type=Path, help="folder for log.csv and the best checkpoint (created)")
    parser.add_argument("--steps", type=int, default=3000, help="optimisation steps (default 3000)")
    parser.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 0.001)")
    parser.add_argument("--max-minutes", type=float, default=0.0, help="stop after this long (0 = no limit)")
    parser.add_argument(
        "--holdout", default="poisson_patch", choices=FAMILIES, help="synthesis family kept for validation"
    )
    parser.add_argument("--validation-volumes", type=int, default=1, help="volumes kept for validation")
    parser.add_argument("--validate-every", type=int, default=100, help="steps between validations")
    parser.add_argument("--channels", type=int, nargs="+", default=[8, 16, 32], help="U-Net widths")
    parser.add_argument("--top-fraction", type=float, default=0.01, help="share of body pixels in the score")
    parser.add_argument("--no-reconstruction", action="store_true", help="the head sees the slice only")
    parser.add_argument("--no-position", action="store_true", help="no position channel")
    parser.add_argument(
        "--snapshots",
        action="store_true",
        help="keep the weights of every validation in RUN/snapshots/ (to choose one afterwards; needs --run)",
    )
    parser.add_argument(
        "--atlas-input",
        action="store_true",
        help="the head also reads the slice's z-map against the model's position atlas (fit-atlas first; "
        "measured worse end to end when the atlas was fitted on the head's own volumes: docs/benchmarks.md)",
    )
    parser.add_argument("--float32", action="store_true", help="store float32 networks (default float16)")
    add_position_regressor_argument(parser, "as the model's training slices were placed")
    add_runtime_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from AnomalyScoutLib.anomaly_map.head import AnomalyHead, HeadConfig
    from AnomalyScoutLib.anomaly_map.training import (
        HeadTrainer,
        HeadTrainingOptions,
        attach_head,
        fast_reconstruction,
    )
    from AnomalyScoutLib.commands.training_run import (
        chosen_placement,
        model_training_slices,
        train_until_done,
        training_device,
    )
    from AnomalyScoutLib.errors import ConfigError
    from AnomalyScoutLib.model_file import AnomalyModel

    device = training_device(args)
    if not args.out.parent.is_dir():
        raise ConfigError(f"--out: folder {args.out.parent} does not exist")
    config = HeadConfig(
        channels=tuple(args.channels),
        use_reconstruction=not args.no_reconstruction,
        use_position=not args.no_position,
        use_atlas=args.atlas_input,
        top_fraction=args.top_fraction,
    )
    options = HeadTrainingOptions(
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        holdout=args.holdout,
        validate_every=args.validate_every,
        max_minutes=args.max_minutes,
        seed=args.seed,
        snapshots=args.snapshots,
    )
    if args.snapshots and args.run is None:
        raise ConfigError("--snapshots needs --run (the folder they are written to)")
    chosen = chosen_placement(args)
    model = AnomalyModel.load(args.model, device)
    if config.use_atlas and model.atlas is None:
        raise ConfigError(f"--atlas-input: {args.model} holds no position atlas (run anomalyscout fit-atlas)")
    data, placed = model_training_slices(args, model, chosen)
    train, validation = data.split(args.validation_volumes)
    if args.run is not None:
        args.run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    head = AnomalyHead(config)
    head.read_atlas(model.atlas if config.use_atlas else None)
    trainer = HeadTrainer(
        head,
        train,
        validation,
        fast_reconstruction(model, device),
        options,
        model.window,
        device,
        run_folder=args.run,
    )
    if not train_until_done(trainer, args):
        print("cancelled: no model file was written", file=sys.stderr)
        return EXIT_CANCELLED
    model = AnomalyModel.load(args.model, "cpu")  # a clean copy (the reconstructor changed memory layouts)
    record = {"data": str(args.data), "model": str(args.model), "placement": placed}
    attach_head(model, trainer.head, {**trainer.summary(), **record})
    model.save(args.out, half=not args.float32)
    best = trainer.best or {}
    print(
        f"wrote {args.out} ({model.model_id}); held-out family {options.holdout}: slice AUROC "
        f"{best.get('slice_auroc', float('nan')):.3f}, pixel AP {best.get('pixel_ap', float('nan')):.3f}",
        file=sys.stderr,
    )
    return 0
