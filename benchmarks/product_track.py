"""The product end to end, as its user runs it: ``anomalyscout score``'s own function on whole test volumes.

Usage (repository root; niced, it is CPU work)::

    nice -n 10 python -m benchmarks.product_track --models models/default.safetensors OTHER.safetensors \
        [--per-type 4 --normals 4] [--modes fast denoise] [--precisions fp32 auto]

With more than one ``--modes`` or ``--precisions`` every model runs in each, its rows named
``MODEL [MODE] [PRECISION]`` (the parts that vary).

Every other track scores slices in the benchmark harness (model-grid slices in the HU window); this one runs
:func:`AnomalyScoutLib.engine.score_file` on each held-out phantom volume (256 x 256 x 100, the phantom
track's test seeds 9000+) and on the real scan, with each model file exactly as shipped: its placement and
range gate, its calibration and default false-positive rate, its intensity envelope, its head and its atlas.
Per model and anomaly type: slice AUROC of the calibrated percentile (the product's ranking; raw score
breaking ties) against the controls' slices, the share of anomalous slices flagged, cases flagged; on the
controls: false flags. Writes ``benchmarks/results/product_track.json``; ``benchmarks.metal_envelope`` uses
the same functions.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from AnomalyScoutLib import metrics
from AnomalyScoutLib.engine import ScoreOptions, VolumeScorer, score_file
from AnomalyScoutLib.inversion import MODES, InversionConfig
from AnomalyScoutLib.io.volume import write_volume
from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.phantom import make_phantom
from AnomalyScoutLib.precision import PRECISIONS
from AnomalyScoutLib.scoring import ScoreConfig
from benchmarks.data import PhantomSplit
from benchmarks.evaluate import paired_case_bootstrap
from benchmarks.results_io import RESULTS_DIR, run_header, write_json

__all__ = [
    "case_bootstrap",
    "REAL_SCAN",
    "evaluate_scorers",
    "SHAPE_XYZ",
    "main",
    "phantom_rows",
    "real_scan",
    "run_scorer",
    "summary",
    "type_metrics",
]

SHAPE_XYZ = (256, 256, 100)
REAL_SCAN = Path(__file__).resolve().parents[1] / "Testing/Data/totalsegmentator_abdomen/example_ct.nii.gz"


def run_scorer(scorer: VolumeScorer, path: Path, out: Path) -> list[dict[str, Any]]:
    score_file(path, out, scorer, ScoreOptions())
    return json.loads((out / "scores.json").read_text())["slices"]


def _ranking(chosen: list[dict[str, Any]]) -> np.ndarray:
    """How slices are ranked: the calibrated percentile, ties (e.g. at 100) broken by the raw score."""
    return np.array([(r["percentile"] or 0.0) + 1e-6 * r["score"] for r in chosen])


def type_metrics(rows: list[dict[str, Any]], kind: str) -> dict[str, float]:
    """Slice AUROC, share flagged and cases flagged of one anomaly type against the controls' slices."""
    chosen = [r for r in rows if r["kind"] in (kind, "normal") and r["in_range"]]
    labels = np.array([r["anomalous"] for r in chosen])
    ranking = _ranking(chosen)
    flagged = np.array([r["flagged"] for r in chosen])
    cases = {r["case"] for r in chosen if r["kind"] == kind}
    return {
        "slice_auroc": metrics.roc_auc(labels, ranking),
        "flagged_share": float(flagged[labels].mean()),
        "cases_flagged": sum(any(r["flagged"] for r in chosen if r["case"] == c) for c in cases),
        "cases": len(cases),
    }


def phantom_rows(scorers: dict[str, VolumeScorer], split: PhantomSplit, work: Path) -> dict[str, list]:
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in scorers}
    for seed, kind in tqdm(split.test_cases, desc="test cases", unit="case"):
        case = make_phantom(seed, shape_xyz=SHAPE_XYZ, anomalies=() if kind == "normal" else (kind,))
        path = work / f"{kind}-{seed}.nrrd"
        write_volume(case.volume, path)
        for name, scorer in scorers.items():
            for k, entry in enumerate(run_scorer(scorer, path, work / f"{kind}-{seed}-{name}")):
                rows[name].append(
                    {**entry, "kind": kind, "case": seed, "anomalous": bool(case.slice_labels[k])}
                )
        path.unlink()
    return rows


def summary(rows: list[dict[str, Any]], types: tuple[str, ...]) -> dict[str, Any]:
    per_type = {kind: type_metrics(rows, kind) for kind in types}
    controls = [r for r in rows if r["kind"] == "normal" and r["in_range"]]
    return {
        "per_type": per_type,
        "mean_type_auroc": float(np.mean([m["slice_auroc"] for m in per_type.values()])),
        "false_flags_on_controls": sum(r["flagged"] for r in controls),
        "control_slices": len(controls),
        "slices_beyond_envelope_on_controls": sum(bool(r["beyond_normal_mm2"]) for r in controls),
    }


def _case_slices(rows: list[dict[str, Any]]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per case: the in-range slices' labels and their ranking (as :func:`type_metrics` ranks them)."""
    by_case: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        if r["in_range"]:
            by_case.setdefault(r["case"], []).append(r)
    return {
        case: (
            np.array([r["anomalous"] for r in chosen]),
            _ranking(chosen),
        )
        for case, chosen in by_case.items()
    }


def case_bootstrap(
    rows: dict[str, list[dict[str, Any]]], types: tuple[str, ...], n_resamples: int = 1000
) -> dict[str, Any]:
    """:func:`benchmarks.evaluate.paired_case_bootstrap` of the models' scored slices (each model's in-range
    slices, ranked as :func:`type_metrics` ranks them), the first model as the reference."""
    kinds = {r["case"]: r["kind"] for r in rows[next(iter(rows))]}
    return paired_case_bootstrap(
        {name: _case_slices(r) for name, r in rows.items()}, kinds, types, n_resamples
    )


def real_scan(scorers: dict[str, VolumeScorer], work: Path) -> dict[str, Any]:
    result = {}
    for name, scorer in scorers.items():
        slices = run_scorer(scorer, REAL_SCAN, work / f"real-{name}")
        result[name] = {
            "flagged": [s["slice_index"] for s in slices if s["flagged"]],
            "beyond_envelope": [s["slice_index"] for s in slices if s["beyond_normal_mm2"]],
            "in_range": sum(s["in_range"] for s in slices),
        }
    return result


def evaluate_scorers(scorers: dict[str, VolumeScorer], split: PhantomSplit) -> dict[str, Any]:
    """Every scorer on the split's test volumes and on the real scan: the results file's shared part."""
    with tempfile.TemporaryDirectory(prefix="product-track-") as work:
        rows = phantom_rows(scorers, split, Path(work))
        real = real_scan(scorers, Path(work))
    return {
        "test_cases": split.as_dict()["test_cases"],
        "phantoms": {name: summary(r, split.types) for name, r in rows.items()},
        "bootstrap": case_bootstrap(rows, split.types),
        "real_scan": real,
    }


def _row_name(path: Path, mode: str, precision: str, args: argparse.Namespace) -> str:
    """``MODEL [MODE] [PRECISION]``, with only the parts that vary between the rows."""
    parts = [str(path)]
    parts += [f"[{mode}]"] if len(args.modes) > 1 else []
    parts += [f"[{precision}]"] if len(args.precisions) > 1 else []
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", type=Path, required=True, help="model files to compare")
    parser.add_argument(
        "--modes", nargs="+", choices=MODES, default=["fast"], help="run every model in each (default fast)"
    )
    parser.add_argument("--per-type", type=int, default=4, help="test cases per anomaly type")
    parser.add_argument("--normals", type=int, default=4, help="normal test cases")
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=PRECISIONS,
        default=["auto"],
        help="run every model in each (auto: the product's default, bf16 where the CPU computes it natively)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "product_track.json")
    args = parser.parse_args(argv)
    started = time.time()
    missing = [str(p) for p in args.models if not p.is_file()]
    if missing:
        print(f"product-track: no model file {', '.join(missing)}", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    models = {path: AnomalyModel.load(path, "cpu") for path in args.models}
    scorers = {
        # one mode and one precision: the rows are named by model, as before the options
        _row_name(path, mode, precision, args): VolumeScorer(
            models[path], InversionConfig(mode=mode), ScoreConfig(), torch.device("cpu"), precision=precision
        )
        for path in args.models
        for mode in args.modes
        for precision in args.precisions
    }
    evaluation = evaluate_scorers(scorers, PhantomSplit(per_type=args.per_type, n_normal=args.normals))
    results = {
        **run_header("product_track", "product_track", argv, started),  # after the work: its wall time
        "modes": {name: scorer.inversion.mode for name, scorer in scorers.items()},
        "models": {name: scorer.model.model_id for name, scorer in scorers.items()},
        "precisions": {name: scorer.precision for name, scorer in scorers.items()},
        **evaluation,
    }
    write_json(results, args.out)
    print(f"[product-track] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
