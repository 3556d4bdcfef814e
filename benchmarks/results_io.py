"""What every track shares: its common options, where results and pictures go, and how they are written.

Results are indented JSON written atomically; every file starts with the same header (track, command,
finish time, wall time, model), so that a number in ``docs/benchmarks.md`` can be traced to its run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from AnomalyScoutLib.atomic import atomic_destination
from AnomalyScoutLib.calibration import Calibration
from AnomalyScoutLib.commands.score import add_position_argument
from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.model_file import DEFAULT_MODEL_PATH, AnomalyModel
from benchmarks.data import RangeExclusion, SlicePlacer

__all__ = [
    "DOCS_PLOTS",
    "RESULTS_DIR",
    "TrackStart",
    "add_common_arguments",
    "add_position_argument",
    "file_digest",
    "placer_for",
    "run_header",
    "write_json",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DOCS_PLOTS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"


def _plain(value: Any) -> Any:
    """numpy scalars/arrays to Python, non-finite floats to None (JSON has no NaN), floats to 4 decimals."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return round(value, 4) if math.isfinite(value) else None
    return value


def write_json(data: dict[str, Any], path: Path) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (temporary name in the folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_destination(path, suffix=".json") as temporary:
        temporary.write_text(json.dumps(_plain(data), indent=1) + "\n")


def run_header(track: str, module: str, argv: list[str] | None, started: float) -> dict[str, Any]:
    """The first keys of every results file: what ran (the command that repeats it), when, and how long."""
    arguments = list(argv if argv is not None else sys.argv[1:])
    return {
        "track": track,
        "command": " ".join([f"python -m benchmarks.{module}", *arguments]),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "wall_s": round(time.time() - started, 1),
    }


def file_digest(path: Path) -> str:
    """First 16 hex digits of the file's SHA-256: identifies a model file's exact weights in cache names."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def add_common_arguments(parser: argparse.ArgumentParser, results_name: str) -> None:
    """``--model --position --ae-steps --seed --threads --out --plots``, the options every track has.

    ``--position`` is ``anomalyscout score``'s own option (:func:`add_position_argument`, the same choices and
    default), so that a track places slices as the product does; every method of the track sees them.
    """
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH, help="our (conditional) model file")
    add_position_argument(parser)
    parser.add_argument("--ae-steps", type=int, default=400, help="autoencoder baseline training steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / f"{results_name}.json")
    parser.add_argument("--plots", type=Path, default=DOCS_PLOTS, help="folder of the PNG pictures")


def placer_for(model: AnomalyModel, position: str) -> SlicePlacer:
    """How a benchmark places slices for ``model`` with ``--position position`` (as ``anomalyscout score``).

    Raises:
        SystemExit: ``anatomy`` asked of a model without a regressor, or an unknown method (one line).
    """
    try:
        return SlicePlacer.for_model(model, position)
    except ConfigError as error:
        raise SystemExit(str(error)) from None


class TrackStart:
    """A track's start: threads set, model loaded, placement chosen, clock started; :meth:`header` opens its
    results (with what the range gate took out of the data, :meth:`record_gate`)."""

    def __init__(self, track: str, args: argparse.Namespace, argv: list[str] | None) -> None:
        torch.set_num_threads(args.threads)
        self.track = track
        self.argv = list(argv if argv is not None else sys.argv[1:])
        self.started = time.time()
        self.model_path = Path(args.model)
        self.model = AnomalyModel.load(self.model_path, "cpu")
        self.placer = placer_for(self.model, args.position)
        self.range_gate: dict[str, dict[str, Any]] = {}

    def record_gate(self, exclusions: dict[str, RangeExclusion]) -> None:
        """Say and keep (in :meth:`header`) what the range gate took out of each named slice set.

        Raises:
            SystemExit: a set has no slice in the model's range (one line: nothing could be measured).
        """
        for what, exclusion in exclusions.items():
            exclusion.announce(what, self.track)
            self.range_gate[what] = exclusion.as_dict()

    def header(self) -> dict[str, Any]:
        return {
            **run_header(self.track, f"{self.track}_track", self.argv, self.started),
            "machine": {
                "cpu_threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "note": "2 CPU cores shared with ~7 other engineers' jobs: timings are pessimistic",
            },
            "model": {
                "path": str(self.model_path),
                "model_id": self.model.model_id,
                "sha256_16": file_digest(self.model_path),
                "training": self.model.metadata.get("training", {}),
            },
            "position": {
                "placement": self.placer.method,
                "range_gate": self.range_gate,
                "calibrated_with": {
                    key: mode.placement
                    for key, mode in Calibration.from_json(self.model.calibration).modes.items()
                },
            },
        }
