"""The ``anomalyscout`` command line.

Each sub-command lives in its own module under :mod:`AnomalyScoutLib.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``func(args) -> int`` as the parser default.
This file only assembles them and turns expected failures into one readable line and a documented exit code:

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

from AnomalyScoutLib import __version__
from AnomalyScoutLib.errors import AnomalyScoutError

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

#: Sub-command modules, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "phantom",
    "info",
    "rank",
    "score",
    "calibrate",
    "demo",
    "train_gan",
    "train_encoder",
    "evaluate_gan",
)

EXIT_INTERNAL_ERROR = 3
EXIT_CANCELLED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anomalyscout",
        description="Find CT slices unlike the normal anatomy a position-conditioned StyleGAN2 has learned.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"AnomalyScoutLib.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
