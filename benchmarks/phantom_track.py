"""Phantom track: held-out phantom cases of each anomaly type and normal controls, all methods side by side.

Usage (repository root; niced, it is CPU work)::

    nice -n 15 python -m benchmarks.phantom_track [--model models/default.safetensors]

Scale (all options; defaults fit two shared CPU cores, see ``docs/benchmarks.md``):

- **train**: ``--train-cases`` normal phantoms (seeds 1000..., the first of the shipped model's own training
  seeds) for the atlas, the autoencoder and anomalib;
- **test**: ``--per-type`` cases of each anomaly type and ``--normal-cases`` normal controls (seeds 9000+,
  never used for training), every ``--stride``-th slice;
- **full test set**: atlas, autoencoder, anomalib and our encoder-only ``fast`` mode (= the f-AnoGAN-style
  baseline) score every test slice;
- **core subset**: a seeded, balanced sample of the test slices (``--core-per-type`` anomalous slices per
  type, ``--core-normal`` normal ones) on which ``accurate`` mode runs with each ``--steps`` value and the
  score settings are swept; every other method is evaluated on the same slices for the comparison table;
- **projector subset**: the first ``--projector-slices`` of the core subset for the poster's projector
  (``--projector-steps``; 1000 in the poster, fewer here when CPU forbids it, and said so in the results);
- **range gate**: slices are placed as ``anomalyscout score --position`` places them, and the slices its range
  gate would not score (outside the model's range, or narrower than an abdomen) are left out of every set
  and every metric, as the product never flags them; how many is in the results' ``position.range_gate``.

Writes ``benchmarks/results/phantom.json`` and ``docs/benchmarks/phantom_*.png``. Every expensive step is
cached in ``benchmarks/work/``, so a rerun with a new model file redoes only the model's own runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from AnomalyScoutLib.inversion import DEFAULT_ACCURATE_STEPS, InversionConfig
from AnomalyScoutLib.preprocessing import HUWindow
from AnomalyScoutLib.scoring import ScoreConfig
from benchmarks import plots
from benchmarks.baselines.anomalib_runner import AnomalibDetector, AnomalibUnavailable
from benchmarks.baselines.atlas import PositionAtlas
from benchmarks.baselines.autoencoder import AutoencoderDetector
from benchmarks.data import (
    BY_INDEX,
    WORK_DIR,
    PhantomSplit,
    RangeExclusion,
    SlicePlacer,
    in_range_only,
    phantom_split,
)
from benchmarks.detectors import Detection, Detector
from benchmarks.evaluate import MethodRun, detection_metrics, method_entry, run_method
from benchmarks.generator_runs import generator_run
from benchmarks.ours import GeneratorDetector
from benchmarks.results_io import TrackStart, add_common_arguments, write_json
from benchmarks.slices import SliceSet

__all__ = [
    "FAST_NAME",
    "UNCONDITIONAL_MODEL",
    "PhantomData",
    "add_data_arguments",
    "baseline_run",
    "balanced_subset",
    "main",
    "phantom_data",
    "score_sweep",
    "sweep_summary",
]

FAST_NAME = "f-AnoGAN style (fast: encoder only)"
#: The poster's baseline: an unconditional GAN of the shipped model's architecture and training budget.
UNCONDITIONAL_MODEL = Path(__file__).resolve().parent / "models" / "poster-unconditional.safetensors"


def balanced_subset(slices: SliceSet, per_type: int, n_normal: int, seed: int) -> np.ndarray:
    """Sorted indices of ``per_type`` anomalous slices of each anomaly type and ``n_normal`` normal slices.

    Normal slices are drawn from all slices without an anomaly (controls and the untouched slices of
    anomalous cases), so the subset keeps the full set's mix of easy and hard negatives.
    """
    rng = np.random.default_rng(seed)
    kinds = slices.case_anomaly
    chosen = []
    for kind in sorted(set(kinds) - {"normal"}):
        candidates = np.flatnonzero(slices.labels & (kinds == kind))
        chosen.append(rng.choice(candidates, min(per_type, candidates.size), replace=False))
    negatives = np.flatnonzero(~slices.labels)
    chosen.append(rng.choice(negatives, min(n_normal, negatives.size), replace=False))
    return np.sort(np.concatenate(chosen))


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that define the phantom data (shared with the segmentation-failure track)."""
    parser.add_argument("--train-cases", type=int, default=6)
    parser.add_argument("--per-type", type=int, default=2)
    parser.add_argument("--normal-cases", type=int, default=4)
    parser.add_argument("--stride", type=int, default=2, help="keep every n-th slice of the test cases")
    parser.add_argument("--resolution", type=int, default=128)


class PhantomData(NamedTuple):
    """A phantom track's data: the split, its slices the product would score, and the names in caches.

    Attributes:
        data_key: names the test selection in cache files (with the placement when not by index, and the
            slices the range gate took out when it took any).
        exclusions: ``{"train" | "test": RangeExclusion}``, what the range gate took out of each.
    """

    split: PhantomSplit
    train: SliceSet
    test: SliceSet
    data_key: str
    exclusions: dict[str, RangeExclusion]


def phantom_data(args: argparse.Namespace, window: HUWindow, placer: SlicePlacer = BY_INDEX) -> PhantomData:
    """The split's slices placed by ``placer``, every ``--stride``-th test slice, and only the slices the
    product's range gate lets through (training slices too: ``calibrate`` learns from no others)."""
    split = PhantomSplit(args.train_cases, args.per_type, args.normal_cases)
    print(f"[phantom] {len(split.train_seeds)} training and {len(split.test_cases)} test cases", flush=True)
    train, test = phantom_split(split, args.resolution, window, placer)
    train, train_out = in_range_only(train)
    test, test_out = in_range_only(test.subset(test.slice_index % args.stride == 0))
    gate = train_out.key_parts() + test_out.key_parts()
    data_key = placer.data_key([split.as_dict(), args.stride, args.resolution, *gate])
    return PhantomData(split, train, test, data_key, {"train": train_out, "test": test_out})


def held_out_data(
    per_type: int, resolution: int, window: HUWindow, placer: SlicePlacer, stride: int = 4
) -> PhantomData:
    """:func:`phantom_data` for ``per_type`` test cases of each anomaly type and as many controls, with the
    GAN's 40 training phantoms as the training split (part of the caches' key, so probes share them)."""
    counts = {"per_type": per_type, "normal_cases": per_type}
    return phantom_data(
        argparse.Namespace(train_cases=40, stride=stride, resolution=resolution, **counts), window, placer
    )


def sweep_summary(metrics_by_type: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The two numbers a sweep is judged by: overall slice AUROC and the worst type's slice AUROC."""
    per_type = [m["slice_auroc"] for t, m in metrics_by_type.items() if t != "overall"]
    return {
        "slice_auroc": metrics_by_type["overall"]["slice_auroc"],
        "worst_type_auroc": min(per_type),
        "mean_type_auroc": float(np.mean(per_type)),
        "pixel_ap": metrics_by_type["overall"]["pixel_ap"],
    }


def method_summary(name: str, slices: SliceSet, detection: Detection, track: str) -> dict[str, Any]:
    """A method's row in a probe's results file (:func:`sweep_summary`'s numbers and the slice AUROC of each
    type), announced in one line prefixed ``[track]``."""
    metrics = detection_metrics(slices, detection)
    per_type = {t: m["slice_auroc"] for t, m in metrics.items() if t != "overall"}
    row = {"method": name, **sweep_summary(metrics), "per_type": per_type}
    overall, mean = row["slice_auroc"], row["mean_type_auroc"]
    print(f"[{track}] {name}: slice AUROC {overall:.3f}, mean over types {mean:.3f}", flush=True)
    return row


def score_sweep(run, slices: SliceSet) -> list[dict[str, Any]]:  # noqa: ANN001 - a GeneratorRun
    """Slice AUROC of one set of reconstructions under a grid of score settings (κ, top fraction,
    smoothing, top-k vs patch Wasserstein)."""
    rows = []
    for method in ("topk", "wasserstein"):
        for kappa in (0.0, 0.1, 1.0, 10.0):
            for top_fraction in (0.01, 0.05, 0.2):
                for smoothing in (0.0, 1.0, 2.0):
                    config = ScoreConfig(
                        method=method, kappa=kappa, top_fraction=top_fraction, smoothing_px=smoothing
                    )
                    summary = sweep_summary(detection_metrics(slices, run.method_run(config).detection))
                    rows.append({**config.as_dict(), **summary})
    return rows


def baseline_run(detector: Detector, train: SliceSet, test: SliceSet, data_key: str) -> MethodRun:
    """:func:`run_method` cached by the detector's settings and the data, shared by the phantom tracks."""
    settings = {k: v for k, v in vars(detector).items() if isinstance(v, (int, float, str))}
    key = hashlib.sha256(json.dumps([data_key, settings], sort_keys=True).encode()).hexdigest()[:16]
    return run_method(detector, train, test, WORK_DIR / "runs" / f"{detector.name}-{key}.npz")


def _baseline_runs(
    args: argparse.Namespace, train: SliceSet, test: SliceSet, data_key: str, unavailable: dict[str, str]
) -> list[MethodRun]:
    detectors = [PositionAtlas(), AutoencoderDetector(steps=args.ae_steps, seed=args.seed)]
    detectors += [
        AnomalibDetector(model, epochs=args.anomalib_epochs, seed=args.seed) for model in args.anomalib
    ]
    runs = []
    for detector in detectors:
        print(f"[phantom] {detector.name} ...", flush=True)
        try:
            runs.append(baseline_run(detector, train, test, data_key))
        except AnomalibUnavailable as error:
            unavailable[detector.name] = str(error)
            print(f"[phantom] {detector.name} not run: {error}", flush=True)
    return runs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, "phantom")
    parser.add_argument(
        "--unconditional-model",
        type=Path,
        default=UNCONDITIONAL_MODEL if UNCONDITIONAL_MODEL.is_file() else None,
        help="unconditional model for the poster's baseline (projector; default: the one in "
        "benchmarks/models/ if present, else not run)",
    )
    add_data_arguments(parser)
    parser.add_argument("--core-per-type", type=int, default=12)
    parser.add_argument("--core-normal", type=int, default=60)
    parser.add_argument(
        "--steps",
        type=int,
        nargs="+",
        default=[5, DEFAULT_ACCURATE_STEPS],
        help="accurate-mode refinement steps to run on the core subset (sweep)",
    )
    parser.add_argument("--projector-slices", type=int, default=16)
    parser.add_argument("--projector-steps", type=int, default=1000)
    parser.add_argument("--anomalib", nargs="*", default=["ganomaly"], choices=["ganomaly", "draem"])
    parser.add_argument("--anomalib-epochs", type=int, default=2)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    track = TrackStart("phantom", args, argv)
    model = track.model
    window = model.window
    split, train, test, data_key, exclusions = phantom_data(args, window, track.placer)
    track.record_gate(exclusions)
    unavailable: dict[str, str] = {}
    if args.unconditional_model is None:
        unavailable["poster (unconditional StyleGAN2 + projector)"] = (
            f"no unconditional model ({UNCONDITIONAL_MODEL.name} is missing and no --unconditional-model "
            "was given)"
        )

    full_runs = _baseline_runs(args, train, test, data_key, unavailable)
    score = ScoreConfig()
    fast = generator_run(
        GeneratorDetector(FAST_NAME, args.model, InversionConfig(mode="fast"), score), test, data_key
    )
    full_runs.append(fast.method_run())
    full_runs += [r for r in [fast.calibrated_run()] if r is not None]

    core = balanced_subset(test, args.core_per_type, args.core_normal, args.seed)
    core_slices = test.subset(core)
    core_key = json.dumps([data_key, core.tolist()])
    accurate_runs = {}
    for steps in args.steps:
        print(f"[phantom] accurate K={steps} on {len(core)} core slices ...", flush=True)
        name = f"ours (accurate, K={steps})"
        detector = GeneratorDetector(name, args.model, InversionConfig(mode="accurate", steps=steps), score)
        accurate_runs[steps] = generator_run(detector, core_slices, core_key)
    per_type = max(1, args.projector_slices // 2 // len(split.types))
    projector_index = balanced_subset(
        core_slices, per_type, max(0, args.projector_slices - per_type * len(split.types)), args.seed
    )
    projector_slices = core_slices.subset(projector_index)
    print(
        f"[phantom] projector ({args.projector_steps} steps) on {len(projector_index)} slices ...", flush=True
    )
    projector_config = InversionConfig(mode="projector", steps=args.projector_steps)
    projector = generator_run(
        GeneratorDetector(
            f"projector, conditional ({args.projector_steps} steps)", args.model, projector_config, score
        ),
        projector_slices,
        json.dumps([core_key, projector_index.tolist()]),
    )
    projector_runs = [projector.method_run()]
    if args.unconditional_model is not None:
        projector_runs.append(
            generator_run(
                GeneratorDetector(
                    f"poster: unconditional + projector ({args.projector_steps} steps)",
                    args.unconditional_model,
                    projector_config,
                    score,
                ),
                projector_slices,
                json.dumps([core_key, projector_index.tolist()]),
            ).method_run()
        )

    default_steps = DEFAULT_ACCURATE_STEPS if DEFAULT_ACCURATE_STEPS in accurate_runs else max(accurate_runs)
    ours = accurate_runs[default_steps].method_run()
    core_runs = [ours] + [r for r in [accurate_runs[default_steps].calibrated_run()] if r is not None]
    core_runs += [r.subset(core) for r in full_runs]
    core_runs += [accurate_runs[k].method_run() for k in accurate_runs if k != default_steps]
    proj_runs = projector_runs + [r.subset(projector_index) for r in core_runs]

    results: dict[str, Any] = {
        **track.header(),
        "split": split.as_dict(),
        "scale": {
            "train_slices": len(train),
            "test_slices": len(test),
            "stride": args.stride,
            "core_slices": len(core_slices),
            "core_anomalous": int(core_slices.labels.sum()),
            "projector_slices": len(projector_slices),
            "projector_steps": args.projector_steps,
            "accurate_steps": list(args.steps),
            "autoencoder_steps": args.ae_steps,
        },
        "score_config": score.as_dict(),
        "unavailable": unavailable,
        "full_test": {r.name: method_entry(r, test, "full test set") for r in full_runs},
        "core_subset": {r.name: method_entry(r, core_slices, "core subset") for r in core_runs},
        "projector_subset": {
            r.name: method_entry(r, projector_slices, "projector subset") for r in proj_runs
        },
        "steps_sweep": {
            str(k): sweep_summary(detection_metrics(core_slices, run.method_run().detection))
            | {"seconds_per_slice": run.seconds / max(1, len(core_slices))}
            for k, run in accurate_runs.items()
        },
        "score_sweep": score_sweep(accurate_runs[default_steps], core_slices),
    }
    write_json(results, args.out)
    _plots(args.plots, test, core_slices, full_runs, core_runs, accurate_runs, results)
    print(f"[phantom] wrote {args.out} in {time.time() - track.started:.0f} s", flush=True)
    return 0


def _plots(
    folder: Path,
    test: SliceSet,
    core: SliceSet,
    full_runs: list[MethodRun],
    core_runs: list[MethodRun],
    accurate_runs: dict,
    results: dict[str, Any],
) -> None:
    plots.plot_roc_per_type(
        core,
        core_runs,
        folder / "phantom_roc_core.png",
        f"Phantom track, core subset ({len(core)} slices): slice-level ROC",
    )
    plots.plot_roc_per_type(
        test,
        full_runs,
        folder / "phantom_roc_full.png",
        f"Phantom track, full test set ({len(test)} slices): slice-level ROC",
    )
    anomalous_cases = []
    for kind in sorted({c.anomaly for c in test.cases} - {"normal"}):
        anomalous_cases.append(next(c.name for c in test.cases if c.anomaly == kind))
    normal_case = next(c.name for c in test.cases if c.anomaly == "normal")
    plots.plot_score_along_slices(
        test,
        full_runs,
        [*anomalous_cases, normal_case],
        folder / "phantom_score_along_slices.png",
        "Slice scores along held-out phantom cases",
    )
    plots.plot_montage(
        core,
        core_runs[0],
        folder / "phantom_montage_ours.png",
        f"{core_runs[0].name}: best and worst on the core subset",
    )
    sweep = results["steps_sweep"]
    steps = sorted(int(k) for k in sweep)
    plots.plot_curve(
        {
            "overall": (steps, [sweep[str(k)]["slice_auroc"] for k in steps]),
            "worst type": (steps, [sweep[str(k)]["worst_type_auroc"] for k in steps]),
        },
        "accurate-mode refinement steps K",
        "slice AUROC (core subset)",
        folder / "phantom_steps.png",
        "Refinement steps vs detection",
    )


if __name__ == "__main__":
    sys.exit(main())
