"""``anomalyscout rank``: which cases (or slices) of an unlabelled pool to annotate next.

Scores every case with the anomaly model (in parallel: ``--jobs`` local worker processes, or the workers of a
running Dask scheduler with ``--scheduler tls://host:8786`` and ``--tls-*`` certificates, or ``tcp://`` on a
network only you use: Dask exchanges pickles, which run code), keeps each case's scores in a cache keyed by
the file's content and the model id so that a re-run or a grown pool only scores the new cases, then picks
``--budget`` items with ``--strategy`` and writes the worklist:

    worklist.csv    rank,case,slice_start,slice_end,score,percentile,reason
    worklist.json   the same items plus the run's settings and the cases that failed (with the reason)

Slices are placed and gated as ``anomalyscout score`` places them (``--position``, the same default: by
anatomy when the model holds a body-part regressor); slices outside the model's range are never listed. A
case that cannot be read or scored (no slice in range included) is reported and skipped; the batch goes on.
Strategies: ``hybrid`` (anomaly-weighted diversity, the default), ``anomaly``, ``diversity`` (k-center on the
encoder's latent codes) and ``random``; see ``docs/active_learning.md`` for how they compare.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from AnomalyScoutLib.active.cache import ScoreCache, default_cache_dir
from AnomalyScoutLib.active.distributed import TlsFiles, insecure_scheduler_warning, score_pool
from AnomalyScoutLib.active.ranking import LEVELS, RANK_STRATEGIES, CaseScorer, build_worklist, write_worklist
from AnomalyScoutLib.cli import add_command_parser
from AnomalyScoutLib.commands.score import add_position_argument
from AnomalyScoutLib.errors import AnomalyScoutError, ConfigError

__all__ = ["load_case_scorer", "read_case_list", "register", "run"]


def load_case_scorer(model: str | None, device: str, position: str) -> tuple[CaseScorer, str, str, str]:
    """The scoring engine as a per-case function, the model's id, the placement it uses (``"anatomy"`` or
    ``"index"``) and the scorer's identity (half of every cache key: model id, placement, calibration).

    Imported here, not at the top, so that ``anomalyscout --help`` does not load the networks.
    """
    from AnomalyScoutLib.active.engine import model_case_scorer

    scorer, model_id = model_case_scorer(model, device, position=position)
    return scorer, model_id, scorer.placement(), scorer.cache_identity()


def read_case_list(path: Path) -> list[str]:
    """Paths listed one per line in ``path`` (blank lines and ``#`` comments skipped), relative ones resolved
    against the list's folder so that a list travels with its data."""
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise ConfigError(f"cannot read the case list {path}: {error.strerror or error}") from error
    entries = (line.split("#", 1)[0].strip() for line in lines)
    return [str(path.parent / entry) for entry in entries if entry]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command_parser(
        subparsers,
        "rank",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("cases", nargs="*", help="CT files or DICOM folders")
    parser.add_argument("--list", type=Path, help="a text file with one case path per line")
    parser.add_argument("--model", help="model file (default: the shipped models/default.safetensors)")
    parser.add_argument("--strategy", choices=RANK_STRATEGIES, default="hybrid", help="default: hybrid")
    parser.add_argument("--budget", type=int, required=True, help="how many cases (or slices) to list")
    parser.add_argument("--out", type=Path, required=True, help="worklist CSV; the JSON goes beside it")
    parser.add_argument("--level", choices=LEVELS, default="case", help="rank whole cases or single slices")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes on this machine (default 1)")
    parser.add_argument(
        "--scheduler",
        help="'local' or the address of a running Dask scheduler; tcp:// sends unauthenticated pickles "
        "(trusted networks only), tls:// with the --tls-* files for a shared cluster",
    )
    parser.add_argument("--tls-ca-file", help="tls:// scheduler: the cluster's certificate authority (PEM)")
    parser.add_argument("--tls-cert", help="tls:// scheduler: this client's certificate (PEM)")
    parser.add_argument("--tls-key", help="tls:// scheduler: this client's key, if not in --tls-cert")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help=f"score cache (default {default_cache_dir()})"
    )
    parser.add_argument("--no-cache", action="store_true", help="score every case, keep nothing")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda[:N] or mps (default auto)")
    add_position_argument(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random and diversity strategies")
    parser.add_argument(
        "--alpha",
        type=float,
        default=1.0,
        help="hybrid: weight of the anomaly rank (0 = pure diversity; default 1)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cases = list(dict.fromkeys([*args.cases, *(read_case_list(args.list) if args.list else [])]))
    if not cases:
        raise ConfigError("no cases to rank: give CT paths or --list FILE")
    if args.budget < 1:
        raise ConfigError(f"--budget must be at least 1, got {args.budget}")
    if args.out.suffix.lower() != ".csv":
        raise ConfigError(f"--out must name a .csv file (the JSON is written beside it), got {args.out}")
    if not args.out.parent.is_dir():
        raise ConfigError(f"--out: the folder {args.out.parent} does not exist")
    tls = None
    if args.tls_ca_file or args.tls_cert or args.tls_key:
        if not (args.tls_ca_file and args.tls_cert):
            raise ConfigError("TLS needs both --tls-ca-file and --tls-cert (and --tls-key if separate)")
        tls = TlsFiles(args.tls_ca_file, args.tls_cert, args.tls_key)
    warning = insecure_scheduler_warning(args.scheduler)
    if warning is not None:
        print(f"warning: {warning}", file=sys.stderr)
    scorer, model_id, placement, identity = load_case_scorer(args.model, args.device, args.position)
    cache = None if args.no_cache else ScoreCache(args.cache_dir or default_cache_dir())
    outcomes = score_pool(
        cases,
        scorer,
        model_id=identity,
        cache=cache,
        jobs=args.jobs,
        scheduler=args.scheduler,
        tls=tls,
        progress=not args.no_progress,
    )
    scored = [(o.case, o.scores) for o in outcomes if o.scores is not None]
    failed = [{"case": o.case, "error": o.error} for o in outcomes if o.error is not None]
    items = build_worklist(
        scored, args.strategy, args.budget, level=args.level, seed=args.seed, alpha=args.alpha
    )
    summary = {
        "strategy": args.strategy,
        "level": args.level,
        "budget": args.budget,
        "seed": args.seed,
        "alpha": args.alpha,
        "model_id": model_id,
        "position": placement,
        "cases": len(cases),
        "scored": len(scored),
        "from_cache": sum(o.cached for o in outcomes),
        "failed": failed,
    }
    json_path = write_worklist(items, str(args.out), summary)
    for failure in failed:
        print(f"skipped {failure['case']}: {failure['error']}", file=sys.stderr)
    print(
        f"{len(items)} {args.level}(s) listed from {len(scored)} of {len(cases)} cases "
        f"({summary['from_cache']} from cache, {len(failed)} failed): {args.out}, {json_path}"
    )
    if not scored:
        raise AnomalyScoutError(f"none of the {len(cases)} cases could be scored (see {json_path})")
    return 0
