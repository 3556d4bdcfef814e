"""Probe: is how warm the head's whole map is an opinion worth adding, and do 60 test cases say so reliably?

Usage (repository root; ~15 minutes the first time, for 60 new phantoms and their reconstructions)::

    nice -n 10 python -m benchmarks.map_level_probe [--model models/default.safetensors] [--per-type 20]

On the 60 cases of ``benchmarks.head_comparison`` the *median* of the head's map over the body, which
subtracting from the top-k made far worse, scored 0.625 over types on its own, and the larger of its
percentile and the top-k's 0.649 against the top-k's 0.613: a difference the case bootstrap resolved, after
trying ten ways of reading the map. Ten ways is a search, so this asks again on cases the search never saw:
``--per-type`` held-out phantoms per type and as many controls (seeds 9000+, every 4th slice, placed by
anatomy), split into the first half (the search's cases when ``--per-type`` is 20) and the second half. Each
score is made a percentile among the calibration normals near the slice's position (as the product
calibrates); an opinion combination is the larger percentile, made a percentile again among the normals'
own (as ``combine_opinions`` flags either). The model's own atlas is the product's second opinion.
Results: ``benchmarks/results/map_level_probe.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from AnomalyScoutLib.scoring import top_fraction_mean
from benchmarks.detectors import Detection
from benchmarks.ensemble import percentile_test_set, position_percentiles
from benchmarks.evaluate import case_slices, paired_case_bootstrap
from benchmarks.generator_runs import GeneratorRun
from benchmarks.head_detector import HeadRun
from benchmarks.phantom_track import method_summary
from benchmarks.results_io import RESULTS_DIR, run_header, write_json
from benchmarks.slices import SliceSet

__all__ = ["combined_percentiles", "main", "map_scores", "part_rows"]

#: The opinions compared, each the larger percentile of its parts; the first is the reference.
COMBINATIONS: dict[str, tuple[str, ...]] = {
    "head top-k": ("top-k",),
    "head map median": ("median",),
    "max(top-k, median)": ("top-k", "median"),
    "max(top-k, atlas) (the product's)": ("top-k", "atlas"),
    "max(top-k, atlas, median)": ("top-k", "atlas", "median"),
}


def map_scores(run: GeneratorRun, slices: SliceSet) -> dict[str, np.ndarray]:
    """Per slice: the head's top-k (its slice score), its map's median over the body, the atlas's score."""
    model = run.detector.model
    maps, _ = HeadRun("head", run, head=model.head).maps()
    body = torch.from_numpy(slices.body)
    top = top_fraction_mean(torch.from_numpy(maps), body, model.head.config.top_fraction).numpy()
    median = np.array([float(np.median(m[b])) if b.any() else 0.0 for m, b in zip(maps, slices.body)])
    with torch.inference_mode():
        atlas = model.atlas.slice_scores(
            torch.from_numpy(slices.images), torch.from_numpy(slices.condition), body
        ).numpy()
    return {"top-k": top.astype(np.float64), "median": median, "atlas": atlas.astype(np.float64)}


def part_rows(
    test: SliceSet, scores: dict[str, np.ndarray], keep: np.ndarray, types: tuple[str, ...], track: str
) -> dict[str, Any]:
    """Each score's row on the ``keep`` part of the test slices, and their paired case bootstrap."""
    part = test.subset(keep)
    chosen = {name: s[keep] for name, s in scores.items()}
    rows = [method_summary(name, part, Detection(None, s), track) for name, s in chosen.items()]
    bootstrap = paired_case_bootstrap(
        {name: case_slices(part, s) for name, s in chosen.items()},
        {c: info.anomaly for c, info in enumerate(part.cases)},
        types,
    )
    return {"cases": len(np.unique(part.case)), "rows": rows, "bootstrap": bootstrap}


def combined_percentiles(
    normal: dict[str, np.ndarray],
    normal_positions: np.ndarray,
    test: dict[str, np.ndarray],
    test_positions: np.ndarray,
    combinations: dict[str, tuple[str, ...]],
) -> dict[str, np.ndarray]:
    """Each combination of opinions as the test slices' percentiles: every opinion's score a percentile among
    the normals near its position (the normals' own among themselves), the larger of a combination's parts
    made a percentile again among the normals' own (as ``combine_opinions`` flags either)."""
    own = {p: position_percentiles(s, normal_positions, s, normal_positions) for p, s in normal.items()}
    theirs = {
        p: position_percentiles(normal[p], normal_positions, s, test_positions) for p, s in test.items()
    }
    return {
        name: position_percentiles(
            np.max([own[p] for p in parts], axis=0),
            normal_positions,
            np.max([theirs[p] for p in parts], axis=0),
            test_positions,
        )
        for name, parts in combinations.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/default.safetensors"))
    parser.add_argument("--per-type", type=int, default=20, help="held-out cases per type (and controls)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "map_level_probe.json")
    args = parser.parse_args(argv)
    started = time.time()
    if not args.model.is_file():
        print(f"map_level_probe: no model file {args.model}", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    chosen = percentile_test_set(args.model, args.per_type)
    if chosen.model.head is None or chosen.model.atlas is None:
        print(f"map_level_probe: {args.model} needs a head and an atlas", file=sys.stderr)
        return 1
    data, normals, test_set = chosen.data, chosen.normals, chosen.data.test
    normal_run, test_run = chosen.fast_runs(args.model)
    normal, test = map_scores(normal_run, normals), map_scores(test_run, test_set)
    scores = combined_percentiles(normal, normals.positions, test, test_set.positions, COMBINATIONS)
    # The i-th case of each type has seed block + i: the first half is what head_comparison's 60 cases are.
    index = np.array([test_set.cases[c].seed % 100 for c in test_set.case])
    half = args.per_type // 2
    halves = {
        f"first {half} per type (the search's cases)": index < half,
        f"last {args.per_type - half} per type (fresh)": index >= half,
        f"all {args.per_type} per type": np.ones(len(index), dtype=bool),
    }
    types = data.split.types
    results = {name: part_rows(test_set, scores, keep, types, "map_level") for name, keep in halves.items()}
    for name, result in results.items():
        for method, interval in result["bootstrap"]["difference_from_first_ci95"].items():
            print(f"[map_level] {name}: {method} minus head top-k: {interval[0]:+.3f} to {interval[1]:+.3f}")
    write_json(
        {
            **run_header("map_level_probe", "map_level_probe", argv, started),
            "model": str(args.model),
            "score": "each opinion's percentile among calibration normals near the slice's position; "
            "combinations: the larger percentile, made a percentile among the normals' own",
            "test_cases": len(test_set.cases),
            "halves": results,
        },
        args.out,
    )
    print(f"[map_level] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
