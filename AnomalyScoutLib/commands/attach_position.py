"""``anomalyscout attach-position``: put a body-part regressor into a model file.

    anomalyscout attach-position --model MODEL.safetensors --position POS.safetensors --out NEW.safetensors

The new model file places slices from their anatomy (``anomalyscout score --position anatomy``, the default
when a regressor is present) instead of by index. The networks, their precision, the calibration and the
training record are kept; the model id changes because the file's tensors changed. --position may also be a
model file that already holds a regressor. The output is written atomically; it may be the model file itself.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from AnomalyScoutLib.cli import add_command_parser

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command_parser(
        subparsers,
        "attach_position",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, required=True, help="model file to start from")
    parser.add_argument(
        "--position", type=Path, required=True, help="regressor file (position-train's output)"
    )
    parser.add_argument("--out", type=Path, required=True, help="model file to write")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from AnomalyScoutLib.errors import ConfigError
    from AnomalyScoutLib.position.store import attach_position

    if not args.out.parent.is_dir():
        raise ConfigError(f"--out: folder {args.out.parent} does not exist")
    model = attach_position(args.model, args.position, args.out)
    print(
        f"wrote {args.out} ({model.model_id}) with the position regressor of {args.position}", file=sys.stderr
    )
    return 0
