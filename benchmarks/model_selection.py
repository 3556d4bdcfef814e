"""Model selection on held-out synthetic anomalies: which trained model file should ship?

Usage (repository root)::

    python -m benchmarks.model_selection --models models/default.safetensors runs/candidate.safetensors

The issue's rule is to select checkpoints with held-out synthetic anomalies, not with FID: FID rewards
samples that look right, while the product needs reconstructions whose residual separates anomalous from
normal slices. Every candidate scores the same **validation** phantoms, seeds 7000+ (disjoint from the
training seeds 1000-1013, the phantom track's test seeds 9000+ and the calibration seeds 900000+), one case
of each anomaly type and two normal controls, every 2nd slice:

- ``fast`` (encoder only) on all validation slices;
- ``accurate`` (encoder + the default refinement) on a seeded balanced subset of them.

Slices are placed as ``anomalyscout score --position`` places them (the same option and default, ``auto``:
by anatomy when the first model file holds a body-part regressor), once, by the first model file, so that
every candidate sees the same positions; the slices the product's range gate would not score are left out
(their count is in the results' ``validation.position.range_gate``).

The chosen model is the one with the highest mean over anomaly types of the accurate-mode slice AUROC (a
mean over types, so that one easy type cannot carry a model). Writes
``benchmarks/results/model_selection.json``; ``python -m benchmarks.report`` turns it into the table in
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from AnomalyScoutLib.inversion import InversionConfig
from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.scoring import ScoreConfig
from benchmarks.data import ANOMALY_TYPES, BY_INDEX, RangeExclusion, SlicePlacer, in_range_only, phantom_case
from benchmarks.evaluate import detection_metrics
from benchmarks.generator_runs import generator_run
from benchmarks.ours import GeneratorDetector
from benchmarks.phantom_track import balanced_subset, sweep_summary
from benchmarks.results_io import (
    RESULTS_DIR,
    add_position_argument,
    file_digest,
    placer_for,
    run_header,
    write_json,
)
from benchmarks.slices import SliceSet, concatenate

__all__ = [
    "PRODUCT_INVERSIONS",
    "VALIDATION_FIRST_SEED",
    "evaluate_candidates",
    "main",
    "ValidationSet",
    "placed_validation_slices",
    "validation_set",
    "validation_cases",
    "validation_slices",
]

#: First seed of the validation phantoms (one block of 100 seeds per anomaly type, as the test split).
VALIDATION_FIRST_SEED = 7000


def validation_cases(per_type: int, n_normal: int) -> list[tuple[int, str]]:
    """``(seed, kind)`` of the validation phantoms: 100 seeds per anomaly type, then the controls."""
    blocks = [*((kind, per_type) for kind in ANOMALY_TYPES), ("normal", n_normal)]
    return [
        (VALIDATION_FIRST_SEED + 100 * b + i, kind)
        for b, (kind, count) in enumerate(blocks)
        for i in range(count)
    ]


def validation_slices(
    per_type: int, n_normal: int, model: AnomalyModel, placer: SlicePlacer = BY_INDEX
) -> SliceSet:
    """Every 2nd slice of the :func:`validation_cases`, on ``model``'s grid and HU window, placed (and marked
    by the range gate) by ``placer``."""
    cases = [
        phantom_case(seed, kind, model.resolution, model.window, placer=placer)
        for seed, kind in validation_cases(per_type, n_normal)
    ]
    slices = concatenate(cases)
    return slices.subset(slices.slice_index % 2 == 0)


#: How the shipped model reconstructs in each mode (the defaults of the product).
PRODUCT_INVERSIONS: dict[str, InversionConfig] = {
    "fast": InversionConfig(mode="fast"),
    "accurate": InversionConfig(mode="accurate"),
}


def _candidate(
    path: Path, slices: SliceSet, core: np.ndarray, data_key: str, inversions: dict[str, InversionConfig]
) -> dict[str, Any]:
    model = AnomalyModel.load(path, "cpu")
    training = model.metadata.get("training", {})
    entry: dict[str, Any] = {
        "path": str(path),
        "model_id": model.model_id,
        "sha256_16": file_digest(path),
        "gan_kimg": training.get("gan", {}).get("kimg"),
        "encoder_kimg": training.get("encoder", {}).get("kimg"),
    }
    core_slices = slices.subset(core)
    for name, inversion in inversions.items():
        # Refinement costs seconds per slice on a CPU: only fast mode sees every validation slice.
        selection, key = (slices, data_key) if inversion.mode == "fast" else (core_slices, data_key + "-core")
        print(f"[model-selection] {path.name}: {name} on {len(selection)} slices ...", flush=True)
        detector = GeneratorDetector(name, path, inversion, ScoreConfig())
        run = generator_run(detector, selection, key)
        metrics = detection_metrics(selection, run.method_run().detection)
        entry[name] = {
            **sweep_summary(metrics),
            "per_type": {t: m["slice_auroc"] for t, m in metrics.items() if t != "overall"},
            "slices_per_s": len(selection) / max(run.seconds, 1e-9),
        }
    return entry


def placed_validation_slices(
    model_path: Path, per_type: int, n_normal: int, position: str
) -> tuple[SliceSet, RangeExclusion, SlicePlacer]:
    """The validation slices placed as ``score --position <position>`` places them for ``model_path``'s
    model, without those out of its range (announced in one line)."""
    model = AnomalyModel.load(model_path, "cpu")
    placer = placer_for(model, position)
    slices, excluded = in_range_only(validation_slices(per_type, n_normal, model, placer))
    excluded.announce("validation", "model-selection")
    return slices, excluded, placer


@dataclass(frozen=True)
class ValidationSet:
    """The validation slices of a model, the key that caches reconstructions of them, and how the results
    file describes them."""

    slices: SliceSet
    key: str
    description: dict[str, Any]


def validation_set(model_path: Path, per_type: int, n_normal: int, position: str) -> ValidationSet:
    """:func:`placed_validation_slices` with the cache key and the results' description of the set, for the
    probes that choose one setting of a model file (the head's checkpoint, its top fraction)."""
    slices, excluded, placer = placed_validation_slices(model_path, per_type, n_normal, position)
    key = placer.data_key(["validation", VALIDATION_FIRST_SEED, per_type, n_normal, *excluded.key_parts()])
    description = {
        "first_seed": VALIDATION_FIRST_SEED,
        "slices": len(slices),
        "anomalous_slices": int(slices.labels.sum()),
        "placement": placer.method,
        "range_gate": excluded.as_dict(),
    }
    return ValidationSet(slices, key, description)


def evaluate_candidates(
    paths: list[Path],
    inversions: dict[str, InversionConfig] = PRODUCT_INVERSIONS,
    *,
    per_type: int = 1,
    n_normal: int = 2,
    core_per_type: int = 6,
    core_normal: int = 30,
    seed: int = 0,
    position: str = "auto",
) -> dict[str, Any]:
    """Every model file of ``paths`` on the same validation slices, in each of ``inversions``.

    Modes other than ``fast`` run on a seeded balanced subset (``core_per_type`` anomalous slices of each
    type, ``core_normal`` normal ones). Slices are placed as ``score --position <position>`` places them for
    the first model file, and those out of its range are left out. Returns the ``validation`` description
    and the ``candidates``.

    Raises:
        SystemExit: ``position`` unknown or ``"anatomy"`` for a first model without a regressor, or no
            validation slice lies in the model's range (one line each).
    """
    slices, excluded, placer = placed_validation_slices(paths[0], per_type, n_normal, position)
    core = balanced_subset(slices, core_per_type, core_normal, seed)
    data_key = placer.data_key(["validation", VALIDATION_FIRST_SEED, per_type, n_normal, seed, core_per_type,
                                core_normal, *excluded.key_parts()])  # fmt: skip
    return {
        "validation": {"first_seed": VALIDATION_FIRST_SEED, "slices": len(slices),
                       "anomalous_slices": int(slices.labels.sum()), "accurate_subset": int(core.size),
                       "position": {"placement": placer.method, "placed_by": str(paths[0]),
                                    "range_gate": excluded.as_dict()}},
        "candidates": [_candidate(path, slices, core, data_key, inversions) for path in paths],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, nargs="+", required=True, help="candidate model files")
    parser.add_argument("--per-type", type=int, default=1, help="validation cases per anomaly type")
    parser.add_argument("--normal-cases", type=int, default=2, help="normal validation controls")
    parser.add_argument(
        "--core-per-type", type=int, default=6, help="accurate mode: anomalous slices per type"
    )
    parser.add_argument("--core-normal", type=int, default=30, help="accurate mode: normal slices")
    parser.add_argument("--seed", type=int, default=0)
    add_position_argument(parser)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "model_selection.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    result = evaluate_candidates(
        args.models,
        per_type=args.per_type,
        n_normal=args.normal_cases,
        core_per_type=args.core_per_type,
        core_normal=args.core_normal,
        seed=args.seed,
        position=args.position,
    )
    candidates = result["candidates"]
    chosen = max(candidates, key=lambda c: c["accurate"]["mean_type_auroc"])
    write_json(
        {
            **run_header("model_selection", "model_selection", argv, started),
            "validation": result["validation"],
            "criterion": "highest mean over anomaly types of the accurate-mode slice AUROC",
            "candidates": candidates,
            "chosen": chosen["path"],
        },
        args.out,
    )  # fmt: skip
    for c in candidates:
        fast, accurate = c["fast"]["mean_type_auroc"], c["accurate"]["mean_type_auroc"]
        print(f"{c['path']}: mean AUROC over types: fast {fast:.3f}, accurate {accurate:.3f}")
    print(f"chosen: {chosen['path']} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
