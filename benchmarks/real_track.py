"""Real-anatomy track: synthetic lesions, metal and fluid inserted into the real abdominal CT fixture.

Usage (repository root, niced)::

    nice -n 15 python -m benchmarks.real_track [--model models/default.safetensors]

Data: ``Testing/Data/totalsegmentator_abdomen/example_ct.nii.gz`` (one patient, 112 slices of 3 mm, pelvis
to upper liver) with its liver mask. There is one real scan, so normal training and test data come from the
same patient: the **even** canonical slices are the normal training slices (for the atlas, the autoencoder
and anomalib), the **odd** slices are the test slices (3 mm from the nearest training slice). Test cases: the
odd slices as they are (normal control) and ``--per-type`` copies of the volume with one anomaly each,
inserted by the phantom's own inserters through a surrogate anatomy (:mod:`benchmarks.real_anatomy`):
tumour (inside the liver mask), metal (clip with streaks), ascites (fluid).

What this favours, said plainly: baselines trained on the even slices have seen this very patient, which
makes their normal model nearly perfect here; our model is the shipped one, trained on phantoms only (no
model trained on real slices exists: one scan is far too little to train a GAN). Its slice positions are
placed as ``anomalyscout score`` places them (``--position``, default ``auto``): by index, the scan's own
range (pelvis..upper liver), which does not match the phantom's (pelvis floor..lung bases), unless the model
holds a body-part regressor, which places them on the phantom's anatomical scale. Slices the product's range
gate would not score are in no metric (their count is in the results' ``position.range_gate``). ``accurate``
mode runs on a balanced subset of slices (CPU), every other method on all test slices.

Writes ``benchmarks/results/real.json`` and ``docs/benchmarks/real_*.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from AnomalyScoutLib.inversion import DEFAULT_ACCURATE_STEPS, InversionConfig
from AnomalyScoutLib.io.geometry import axial_frame, to_canonical
from AnomalyScoutLib.io.volume import read_label_map, read_volume
from AnomalyScoutLib.preprocessing import HUWindow
from AnomalyScoutLib.scoring import ScoreConfig
from benchmarks import plots
from benchmarks.baselines.anomalib_runner import AnomalibDetector, AnomalibUnavailable
from benchmarks.baselines.atlas import PositionAtlas
from benchmarks.baselines.autoencoder import AutoencoderDetector
from benchmarks.data import BY_INDEX, SlicePlacer, in_range_only, volume_slices
from benchmarks.evaluate import detection_metrics, method_entry
from benchmarks.generator_runs import generator_run
from benchmarks.ours import GeneratorDetector
from benchmarks.phantom_track import FAST_NAME, balanced_subset, baseline_run, sweep_summary
from benchmarks.real_anatomy import estimate_noise_hu, insert_real_anomaly, surrogate_anatomy
from benchmarks.results_io import TrackStart, add_common_arguments, file_digest, write_json
from benchmarks.slices import CaseInfo, SliceSet, concatenate

__all__ = ["REAL_CT", "REAL_LIVER", "REAL_TYPES", "main", "real_data"]

_DATA = Path(__file__).resolve().parent.parent / "Testing" / "Data" / "totalsegmentator_abdomen"
REAL_CT = _DATA / "example_ct.nii.gz"
REAL_LIVER = _DATA / "example_ct_liver.nii.gz"
REAL_TYPES: tuple[str, ...] = ("tumour", "metal", "ascites")
#: Score settings checked on real anatomy: the engine's default and the phantom sweep's best ones.
SCORE_CANDIDATES: tuple[ScoreConfig, ...] = (
    ScoreConfig(),
    ScoreConfig(method="wasserstein", kappa=10.0, top_fraction=0.01),
    ScoreConfig(method="topk", kappa=10.0, top_fraction=0.01),
    ScoreConfig(method="topk", kappa=10.0, top_fraction=0.05),
)


def real_data(
    ct: Path,
    liver_path: Path,
    types: tuple[str, ...],
    per_type: int,
    seed: int,
    resolution: int,
    window: HUWindow,
    placer: SlicePlacer = BY_INDEX,
) -> tuple[SliceSet, SliceSet, dict[str, Any]]:
    """``(train, test, provenance)``: even slices for training, odd slices of the control and the anomalous
    copies for testing (see the module docstring)."""
    volume = read_volume(ct)
    frame = axial_frame(volume)
    hu = to_canonical(volume.array_zyx, frame).astype(np.float32)
    liver = to_canonical(read_label_map(liver_path, volume), frame) > 0
    anatomy = surrogate_anatomy(hu, frame.spacing_kji, liver)
    noise_hu = estimate_noise_hu(hu, liver)
    spacing = frame.spacing_kji

    def case(volume_hu: np.ndarray, truth: np.ndarray, info: CaseInfo) -> SliceSet:
        return volume_slices(volume_hu, spacing, truth, liver, info, resolution, window, placer)

    normal = case(hu, np.zeros(hu.shape, dtype=bool), CaseInfo("real-normal", "normal", 0))
    train = normal.subset(normal.slice_index % 2 == 0)
    tests = [normal.subset(normal.slice_index % 2 == 1)]
    inserted = []
    for t, kind in enumerate(types):
        for i in range(per_type):
            case_seed = seed * 1000 + 100 * t + i
            new, changed = insert_real_anomaly(kind, hu, anatomy, case_seed, noise_hu)
            one = case(new, changed, CaseInfo(f"real-{kind}-{i}", kind, case_seed))
            tests.append(one.subset(one.slice_index % 2 == 1))
            inserted.append(
                {
                    "case": f"real-{kind}-{i}",
                    "seed": case_seed,
                    "voxels": int(changed.sum()),
                    "slices": np.flatnonzero(changed.any(axis=(1, 2))).tolist(),
                }
            )
    provenance = {
        "ct": str(ct),
        "liver": str(liver_path),
        "noise_hu_estimate": noise_hu,
        "spine_front_y_mm": anatomy.habitus["spine_front_y_mm"],
        "inserted": inserted,
    }
    return train, concatenate(tests), provenance


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, "real")
    parser.add_argument("--ct", type=Path, default=REAL_CT)
    parser.add_argument("--liver", type=Path, default=REAL_LIVER)
    parser.add_argument("--per-type", type=int, default=3)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--core-per-type", type=int, default=12)
    parser.add_argument("--core-normal", type=int, default=36)
    parser.add_argument("--steps", type=int, default=DEFAULT_ACCURATE_STEPS)
    parser.add_argument("--anomalib", nargs="*", default=["ganomaly"], choices=["ganomaly", "draem"])
    parser.add_argument("--anomalib-epochs", type=int, default=10)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    track = TrackStart("real", args, argv)
    model = track.model
    train, test, provenance = real_data(
        args.ct, args.liver, REAL_TYPES, args.per_type, args.seed, args.resolution, model.window, track.placer
    )
    # Only the slices the product would score (its range gate), for training the baselines too.
    train, train_out = in_range_only(train)
    test, test_out = in_range_only(test)
    track.record_gate({"train": train_out, "test": test_out})
    data_key = track.placer.data_key(
        ["real", file_digest(args.ct), REAL_TYPES, args.per_type, args.seed, args.resolution,
         *train_out.key_parts(), *test_out.key_parts()]
    )  # fmt: skip
    print(
        f"[real] {len(train)} training slices, {len(test)} test slices ({int(test.labels.sum())} anomalous)",
        flush=True,
    )
    unavailable: dict[str, str] = {}
    runs = []
    detectors = [PositionAtlas(), AutoencoderDetector(steps=args.ae_steps, seed=args.seed)]
    detectors += [AnomalibDetector(m, epochs=args.anomalib_epochs, seed=args.seed) for m in args.anomalib]
    for detector in detectors:
        print(f"[real] {detector.name} ...", flush=True)
        try:
            runs.append(baseline_run(detector, train, test, data_key))
        except AnomalibUnavailable as error:
            unavailable[detector.name] = str(error)
    score = ScoreConfig()
    runs.append(
        generator_run(
            GeneratorDetector(FAST_NAME, args.model, InversionConfig(mode="fast"), score), test, data_key
        ).method_run()
    )
    core = balanced_subset(test, args.core_per_type, args.core_normal, args.seed)
    core_slices = test.subset(core)
    print(f"[real] accurate K={args.steps} on {len(core)} core slices ...", flush=True)
    accurate_run = generator_run(
        GeneratorDetector(
            f"ours (accurate, K={args.steps})",
            args.model,
            InversionConfig(mode="accurate", steps=args.steps),
            score,
        ),
        core_slices,
        json.dumps([data_key, core.tolist()]),
    )
    accurate = accurate_run.method_run()
    core_runs = [accurate] + [r.subset(core) for r in runs]
    # The phantom track's score sweep chooses settings in-sample; this checks them on other data.
    score_check = [
        {
            **config.as_dict(),
            **sweep_summary(detection_metrics(core_slices, accurate_run.method_run(config).detection)),
        }
        for config in SCORE_CANDIDATES
    ]

    results = {
        **track.header(),
        "data": {
            **provenance,
            "train_slices": len(train),
            "test_slices": len(test),
            "test_anomalous_slices": int(test.labels.sum()),
            "core_slices": len(core_slices),
            "split": "even canonical slices train, odd slices test (one patient)",
        },
        "unavailable": unavailable,
        "full_test": {r.name: method_entry(r, test, "all odd slices") for r in runs},
        "core_subset": {r.name: method_entry(r, core_slices, "core subset") for r in core_runs},
        "score_check": score_check,
    }
    write_json(results, args.out)
    plots.plot_roc_per_type(
        core_slices,
        core_runs,
        args.plots / "real_roc_core.png",
        f"Real-anatomy track, core subset ({len(core_slices)} slices)",
    )
    plots.plot_roc_per_type(
        test, runs, args.plots / "real_roc_full.png", f"Real-anatomy track, all test slices ({len(test)})"
    )
    plots.plot_montage(
        core_slices,
        accurate,
        args.plots / "real_montage_ours.png",
        f"{accurate.name} on real anatomy: best and worst",
    )
    print(f"[real] wrote {args.out} in {time.time() - track.started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
