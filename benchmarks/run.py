"""Run benchmark tracks and refresh the tables of ``docs/benchmarks.md``: ``python -m benchmarks.run``.

``--track phantom|real|segfail|speed|all`` (default all). Each track is also a command of its own with
more options (``python -m benchmarks.phantom_track --help``); this one runs them with their defaults and
the given ``--model``, then ``benchmarks.report``. ``speed`` is the scoring engine's own benchmark
(``benchmarks/speed.py``); the baselines' speeds come from the phantom track's run.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from AnomalyScoutLib.model_file import DEFAULT_MODEL_PATH
from benchmarks import report

__all__ = ["TRACKS", "main"]

#: Track name -> module whose ``main(argv)`` runs it.
TRACKS: dict[str, str] = {
    "phantom": "benchmarks.phantom_track",
    "real": "benchmarks.real_track",
    "segfail": "benchmarks.segfail_track",
    "speed": "benchmarks.speed",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--track", choices=[*TRACKS, "all"], default="all")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    args = parser.parse_args(argv)
    for name in TRACKS if args.track == "all" else [args.track]:
        print(f"== {name}", flush=True)
        status = importlib.import_module(TRACKS[name]).main(["--model", str(args.model)])
        if status:
            return status
    return report.main([])


if __name__ == "__main__":
    sys.exit(main())
