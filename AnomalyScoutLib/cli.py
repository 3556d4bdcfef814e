"""The ``anomalyscout`` command line.

Each sub-command lives in its own module under :mod:`AnomalyScoutLib.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``func(args) -> int`` as the parser default.
This file only assembles them and turns expected failures into one readable line and a documented exit code.
Only the module of the sub-command being run is imported: the modules import torch, SciPy, SimpleITK and
the networks, seconds of start-up that ``anomalyscout --help`` or ``anomalyscout phantom`` do not need.
The other sub-commands are listed with their one-line help from :data:`COMMANDS`.

====  =====================================================================
code  meaning
====  =====================================================================
0     success
1     invalid input (bad volume, bad model file, bad option value)
2     command-line usage error (argparse)
3     unexpected internal error (a bug: please report it with the traceback)
130   cancelled (Ctrl-C / SIGTERM); nothing was written
====  =====================================================================
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from AnomalyScoutLib import __version__
from AnomalyScoutLib.errors import AnomalyScoutError
from AnomalyScoutLib.omp_threads import limit_spin_waiting

__all__ = [
    "COMMANDS",
    "COMMAND_MODULES",
    "EXIT_CANCELLED",
    "SCORING_MODULES",
    "add_command_parser",
    "build_parser",
    "command_name",
    "main",
]

#: Sub-command module -> the line ``--help`` shows for it, in the order ``--help`` lists them. Each module's
#: ``register`` takes its line from here (:func:`add_command_parser`), so ``--help`` needs no module import.
COMMANDS: dict[str, str] = {
    "phantom": "write synthetic abdominal CT cases (with optional anomalies) and a manifest",
    "info": "describe a CT volume: size, spacing, orientation, HU range, series, slice positions",
    "rank": "rank a pool of CT cases for annotation (active learning worklist)",
    "score": "score one CT: residual heatmap, slice and case anomaly scores",
    "review": "list the slices where a segmentation (from any model) is most at risk of being wrong",
    "calibrate": "store normal score distributions in a model file",
    "demo": "score a phantom with known anomalies and report how well it was found",
    "train": "train a whole model on normal CT (GAN, encoder, calibration), resumable",
    "train_gan": "train the position-conditioned StyleGAN2 on normal CT volumes",
    "train_encoder": "train the encoder of a train-gan run and write the model file",
    "train_head": "train the anomaly-map head of a model on normal volumes (synthetic anomalies)",
    "train_denoiser": "train a model's coarse-noise denoiser (a second calibrated opinion), resumable",
    "evaluate_gan": (
        "FID, encoder/discriminator Fréchet distances and HU-distribution distances of generated slices"
    ),
    "position_train": "train the body-part regressor that places slices on the anatomical scale",
    "attach_position": "put a body-part regressor into a model file (slices placed by anatomy)",
    "fit_atlas": "put a per-position intensity atlas into a model file (a second calibrated opinion)",
}
#: Sub-command modules, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = tuple(COMMANDS)

EXIT_INTERNAL_ERROR = 3
EXIT_CANCELLED = 130


def command_name(module: str) -> str:
    """The sub-command a module registers (``train_gan``: ``train-gan``)."""
    return module.replace("_", "-")


def add_command_parser(
    subparsers: argparse._SubParsersAction, module: str, **kwargs: Any
) -> argparse.ArgumentParser:
    """The parser of the sub-command in ``module``, with its name and its line from :data:`COMMANDS`."""
    return subparsers.add_parser(command_name(module), help=COMMANDS[module], **kwargs)


def _chosen_module(argv: Sequence[str]) -> str | None:
    """The module of the sub-command in ``argv``: its first word that is not an option, as argparse reads
    it (no top-level option takes a value). None for ``--help``, ``--version`` or an unknown word."""
    word = next((arg for arg in argv if not arg.startswith("-")), None)
    return next((module for module in COMMANDS if command_name(module) == word), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv`` (default ``sys.argv[1:]``): the full parser of the sub-command it names, a
    placeholder with the one-line help for every other one (never reached by that ``argv``)."""
    parser = argparse.ArgumentParser(
        prog="anomalyscout",
        description="Find CT slices unlike the normal anatomy a position-conditioned StyleGAN2 has learned.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = _chosen_module(sys.argv[1:] if argv is None else argv)
    for module in COMMANDS:
        if module == chosen:
            importlib.import_module(f"AnomalyScoutLib.commands.{module}").register(subparsers)
        else:
            add_command_parser(subparsers, module)
    return parser


#: Sub-commands that run the scoring engine (its helper threads beside torch's: ``omp_threads``).
SCORING_MODULES: frozenset[str] = frozenset({"score", "review", "calibrate", "rank", "demo"})


def main(argv: Sequence[str] | None = None) -> int:
    if _chosen_module(sys.argv[1:] if argv is None else argv) in SCORING_MODULES:
        limit_spin_waiting()  # before the sub-command's module imports torch
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AnomalyScoutError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except BrokenPipeError:
        # The reader went away (`anomalyscout info CT | head`): not an error of ours. Point stdout at
        # devnull so that the interpreter's final flush does not complain a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception:  # noqa: BLE001 - the last line of defence: report a bug, don't hide it
        traceback.print_exc()
        print(
            "error: internal error (a bug in AnomalyScout); the traceback above helps to fix it",
            file=sys.stderr,
        )
        return EXIT_INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
