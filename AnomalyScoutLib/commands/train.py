"""``anomalyscout train DATA --out MODEL``: a whole model for a new site in one resumable command.

    anomalyscout train NORMAL_VOLUMES --out my.safetensors [--config cpu-mid] [--gan-kimg 200]
                       [--calibration-data HELD_OUT_NORMALS | --holdout 3] [--work RUN_DIR]
    torchrun --nproc_per_node 4 -m AnomalyScoutLib train ...  # GAN stage data-parallel; the rest on rank 0

It runs the stages a user would otherwise chain by hand, each with its own progress bar:

1. ``train-gan``: the position-conditioned GAN on the training volumes (checkpoints every few minutes);
2. ``train-encoder``: the encoder of that GAN, written as a model file;
3. optionally ``train-head`` (``--head-steps``: the learned anomaly map), ``train-denoiser``
   (``--denoiser-steps``: a second calibrated opinion) and ``attach-position`` (``--position-regressor``:
   slices placed by anatomy, range gate);
4. ``fit-atlas``: the per-position intensity atlas of the training volumes, a second opinion beside the
   reconstruction (``--no-atlas`` leaves it out);
5. ``calibrate``: normal score distributions per body position on held-out normal volumes (never the
   training volumes: a calibration on seen data would under-state the false-positive rate).

With ``--position-regressor`` every stage places the slices alike, by anatomy with that regressor: the GAN,
the encoder and the head train on positions where the slices lie in the body (not by index over each
volume's scanned range, wrong for a real CT that is not pelvis floor to lung bases, and without the slices
outside the model's range), and the regressor goes into the model, so that scoring places as training did.

Everything lives in the work folder (default: ``MODEL`` with ``.run`` appended): the volume lists, the GAN
run, the encoder's model file. Running the same command again continues where it stopped: the GAN resumes
exactly from its checkpoint (and trains further if ``--gan-kimg`` grew), a finished encoder is kept.
``MODEL`` is written only at the end, atomically.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from AnomalyScoutLib.cli import add_command_parser
from AnomalyScoutLib.commands.train_encoder import add_code_space_arguments
from AnomalyScoutLib.errors import ConfigError

__all__ = ["register", "run", "split_volumes"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command_parser(
        subparsers, "train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", help="normal CT volumes: a folder, a phantom folder or a text list of paths")
    parser.add_argument("--out", type=Path, required=True, help="model file to write (.safetensors)")
    parser.add_argument("--work", type=Path, help="work folder for the stages (default: OUT.run)")
    held_out = parser.add_mutually_exclusive_group()
    held_out.add_argument("--calibration-data", help="held-out normal volumes for calibration")
    held_out.add_argument(
        "--holdout",
        type=int,
        default=None,
        help="hold this many of DATA's volumes out of training for calibration (default: a fifth, >= 1)",
    )
    parser.add_argument("--res", type=int, default=128, help="image resolution (default 128)")
    parser.add_argument("--config", default="cpu-mid", help="architecture preset or JSON (default cpu-mid)")
    parser.add_argument("--gan-kimg", type=float, default=200.0, help="GAN length in kimg (default 200)")
    parser.add_argument("--encoder-kimg", type=float, default=40.0, help="encoder length (default 40)")
    parser.add_argument("--encoder-minutes", type=float, default=0.0, help="cap on the encoder's time")
    # The narrowing chosen for the shipped model on held-out anomalies (models/README.md).
    add_code_space_arguments(parser, offset_scale=0.6, single_w=True)
    parser.add_argument(
        "--atlas",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fit the per-position intensity atlas of the training volumes (default: yes)",
    )
    parser.add_argument(
        "--head-steps",
        type=int,
        default=0,
        help="also train the anomaly-map head this long (default 0: none)",
    )
    parser.add_argument(
        "--denoiser-steps",
        type=int,
        default=0,
        help="also train the coarse-noise denoiser, a calibrated second opinion, this long (default 0: none; "
        "the default model's: 7000, about an hour on one CPU thread)",
    )
    parser.add_argument(
        "--position-regressor",
        type=Path,
        help="body-part regressor file (position-train): places the slices of every stage by anatomy and "
        "goes into the model",
    )
    parser.add_argument("--batch", type=int, default=16, help="GAN batch size (default 16)")
    parser.add_argument("--augment", default="translation", help="DiffAugment policy (default translation)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the GAN's G and D passes")
    parser.add_argument(
        "--calibration-modes",
        default=None,
        help="modes to calibrate (default fast,accurate, and denoise with --denoiser-steps)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def split_volumes(paths: Sequence[Path], holdout: int | None) -> tuple[list[Path], list[Path]]:
    """``(training, calibration)``: the last ``holdout`` volumes (default a fifth, at least one) are held out.

    The split is by position in the stable listing, so running the command again holds out the same volumes.

    Raises:
        ConfigError: too few volumes to hold any out and still train.
    """
    count = max(1, len(paths) // 5) if holdout is None else holdout
    if count < 1 or count >= len(paths):
        raise ConfigError(
            f"cannot hold out {count} of {len(paths)} volume(s) for calibration and still train on the rest: "
            "give more volumes, a smaller --holdout, or --calibration-data"
        )
    return list(paths[:-count]), list(paths[-count:])


def _write_list(path: Path, volumes: Sequence[Path]) -> Path:
    path.write_text("".join(f"{volume.resolve()}\n" for volume in volumes))
    return path


def _stage(number: int, total: int, title: str) -> float:
    print(f"[{number}/{total}] {title}", file=sys.stderr, flush=True)
    return time.monotonic()


def _is_main_process() -> bool:
    """True in a plain run and on rank 0 of a torchrun (read from the environment torchrun sets)."""
    return int(os.environ.get("RANK", "0")) == 0


def _runtime(args: argparse.Namespace) -> list[str]:
    flags = ["--device", args.device, "--seed", str(args.seed)]
    if args.threads:
        flags += ["--threads", str(args.threads)]
    if args.no_progress:
        flags.append("--no-progress")
    return flags


def _placement(args: argparse.Namespace) -> list[str]:
    """``--position-regressor`` for every training stage, so that all place the slices alike."""
    return [] if args.position_regressor is None else ["--position-regressor", str(args.position_regressor)]


def run(args: argparse.Namespace) -> int:
    from AnomalyScoutLib.cli import main as cli_main
    from AnomalyScoutLib.train.data import list_volumes

    if not args.out.parent.is_dir():
        raise ConfigError(f"--out: folder {args.out.parent} does not exist")
    work = args.work or args.out.with_name(args.out.name + ".run")
    work.mkdir(parents=True, exist_ok=True)
    volumes = list_volumes(args.data)
    if args.calibration_data:
        training, calibration = volumes, list_volumes(args.calibration_data)
        overlap = {p.resolve() for p in training} & {p.resolve() for p in calibration}
        if overlap:
            raise ConfigError(
                f"--calibration-data shares {len(overlap)} volume(s) with DATA (e.g. {sorted(overlap)[0]}): "
                "calibrate on normals the model never saw"
            )
    else:
        training, calibration = split_volumes(volumes, args.holdout)
    train_list = _write_list(work / "train-list.txt", training)
    calibration_list = _write_list(work / "calibration-list.txt", calibration)
    print(
        f"train: {len(training)} training and {len(calibration)} calibration volume(s); work folder {work}",
        file=sys.stderr,
    )

    stages = 3 + (args.head_steps > 0) + (args.denoiser_steps > 0) + (args.position_regressor is not None)
    stages += args.atlas
    started = _stage(1, stages, f"GAN ({args.config}, {args.gan_kimg:g} kimg)")
    gan_dir = work / "gan"
    gan_args = ["train-gan", "--out", str(gan_dir), "--kimg", str(args.gan_kimg)]
    gan_args += ["--precision", args.precision]
    if (gan_dir / "checkpoint.safetensors").is_file():
        gan_args.append("--resume")
    else:
        gan_args += ["--data", str(train_list), "--res", str(args.res), "--config", args.config]
        gan_args += ["--batch", str(args.batch), "--augment", args.augment]
    if args.compile:
        gan_args.append("--compile")
    code = cli_main(gan_args + _placement(args) + _runtime(args))
    if code:
        return code
    if not _is_main_process():
        return 0  # the other ranks only help with the GAN
    print(f"      GAN done in {time.monotonic() - started:.0f} s", file=sys.stderr)

    model_file = work / "encoder.safetensors"
    code = _kept_or_made(
        _stage(2, stages, f"encoder ({args.encoder_kimg:g} kimg)"),
        model_file,
        ["train-encoder", "--gan", str(gan_dir), "--out", str(model_file), "--kimg", str(args.encoder_kimg),
         "--max-minutes", str(args.encoder_minutes), "--offset-scale", str(args.offset_scale),
         "--single-w" if args.single_w else "--no-single-w", *_placement(args), *_runtime(args)],
    )  # fmt: skip
    if code:
        return code
    stage = 3
    if args.head_steps > 0:
        head_file = work / "head.safetensors"
        code = _kept_or_made(
            _stage(stage, stages, f"anomaly-map head ({args.head_steps} steps)"),
            head_file,
            ["train-head", "--model", str(model_file), "--data", str(train_list), "--out", str(head_file),
             "--run", str(work / "head"), "--steps", str(args.head_steps), *_placement(args),
             *_runtime(args)],
        )  # fmt: skip
        if code:
            return code
        model_file, stage = head_file, stage + 1
    if args.denoiser_steps > 0:
        denoiser_file = work / "denoiser.safetensors"
        code = _kept_or_made(
            _stage(stage, stages, f"denoiser ({args.denoiser_steps} steps)"),
            denoiser_file,
            ["train-denoiser", "--model", str(model_file), "--data", str(train_list), "--out",
             str(denoiser_file), "--run", str(work / "denoiser"), "--steps", str(args.denoiser_steps),
             *_placement(args), *_runtime(args)],
        )  # fmt: skip
        if code:
            return code
        model_file, stage = denoiser_file, stage + 1
    if args.position_regressor is not None:
        placed_file = work / "placed.safetensors"
        code = _kept_or_made(
            _stage(stage, stages, f"body-part regressor from {args.position_regressor}"),
            placed_file,
            ["attach-position", "--model", str(model_file), "--position", str(args.position_regressor),
             "--out", str(placed_file)],
        )  # fmt: skip
        if code:
            return code
        model_file, stage = placed_file, stage + 1
    if args.atlas:
        atlas_file = work / "atlas.safetensors"
        code = _kept_or_made(
            _stage(stage, stages, "position atlas of the training volumes"),
            atlas_file,
            ["fit-atlas", "--model", str(model_file), "--data", str(train_list), "--out", str(atlas_file)],
        )
        if code:
            return code
        model_file, stage = atlas_file, stage + 1

    started = _stage(stage, stages, f"calibration on {len(calibration)} held-out normal volume(s)")
    calibrate_args = ["calibrate", "--model", str(model_file), "--out", str(args.out)]
    calibrate_args += ["--data", str(calibration_list)]
    if args.calibration_modes:  # else calibrate's default: the model's modes
        calibrate_args += ["--modes", args.calibration_modes]
    calibrate_args += ["--device", args.device]
    code = cli_main(calibrate_args)
    if code:
        return code
    print(f"      calibration done in {time.monotonic() - started:.0f} s; model: {args.out}", file=sys.stderr)
    return 0


def _kept_or_made(started: float, output: Path, command: list[str]) -> int:
    """Runs ``command`` unless ``output`` exists from an earlier run (what makes ``train`` resumable)."""
    from AnomalyScoutLib.cli import main as cli_main

    if output.is_file():
        print(f"      kept {output} from an earlier run (delete it to make it again)", file=sys.stderr)
        return 0
    code = cli_main(command)
    if not code:
        print(f"      done in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return code
