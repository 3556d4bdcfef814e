"""Where the reconstruction error goes: ``python -m benchmarks.reconstruction_error --models A B``.

The anomaly signal is the residual |slice - reconstruction|; it is only readable if normal tissue is
reconstructed well. For each model and inversion mode this reports, on held-out phantom cases (seeds far from
every training seed), the mean absolute error in HU

* inside the *normal body* (body mask minus the inserted anomaly), the noise floor every score sits on;
* inside the *anomalies*, the signal;
* their ratio (issue 17's target: normal <= 25 HU, ratio >= 3);

per anomaly type and per position bin. Running the same model in ``fast`` (encoder only), ``accurate``
(encoder + K refinement steps) and ``projector`` (many steps from the mean latent) separates the error of the
encoder from the generator's own floor: what the projector cannot reach, the generator cannot draw.

Errors are in HU inside the model's window (clipped to it, as the model sees the slice). Each model places the
slices as ``anomalyscout score --position`` places them for it (the same option and default), and the slices
its range gate would not score are left out (their count is in each row's ``range_gate``). Results go to
``benchmarks/results/reconstruction_error.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from AnomalyScoutLib.atomic import write_bytes_atomic
from AnomalyScoutLib.inversion import InversionConfig
from AnomalyScoutLib.model_file import DEFAULT_MODEL_PATH, AnomalyModel
from AnomalyScoutLib.scoring import ScoreConfig
from benchmarks.data import ANOMALY_TYPES, BY_INDEX, RangeExclusion, SlicePlacer, in_range_only, phantom_case
from benchmarks.ours import GeneratorDetector
from benchmarks.results_io import add_position_argument, placer_for
from benchmarks.slices import SliceSet, concatenate

__all__ = ["error_summary", "held_out_slices", "main", "training_slices"]

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "reconstruction_error.json"
#: Held-out seeds: a block per anomaly type, far from training (1000-1039), calibration (900000+) and the
#: phantom track's test blocks (9000-9599).
FIRST_SEED = 9700
#: The GAN's training phantoms (``anomalyscout phantom --n 40 --seed 1000``).
TRAINING_SEED = 1000


def error_summary(slices: SliceSet, reconstructions: np.ndarray, hu_per_unit: float) -> dict[str, Any]:
    """Mean absolute errors (HU) in the normal body and in anomalies, overall, per type and per position."""
    error = np.abs(slices.images - reconstructions) * hu_per_unit
    normal = slices.body & ~slices.anomaly

    def mean(mask: np.ndarray) -> float | None:
        return float(error[mask].mean()) if mask.any() else None

    kinds = np.array([slices.cases[c].anomaly for c in slices.case])
    per_type = {}
    for kind in sorted(set(kinds)):
        rows = kinds == kind
        inside = mean(slices.anomaly & rows[:, None, None])
        per_type[kind] = {"normal_body_hu": mean(normal & rows[:, None, None]), "anomaly_hu": inside}
    bins = np.clip((slices.positions * 5).astype(int), 0, 4)
    per_position = {
        f"{b / 5:.1f}-{(b + 1) / 5:.1f}": mean(normal & (bins == b)[:, None, None]) for b in range(5)
    }
    normal_hu, anomaly_hu = mean(normal), mean(slices.anomaly)
    return {
        "normal_body_hu": normal_hu,
        "anomaly_hu": anomaly_hu,
        "ratio": anomaly_hu / normal_hu if normal_hu and anomaly_hu else None,
        "per_type": per_type,
        "normal_body_hu_per_position": per_position,
    }


def held_out_slices(
    per_type: int, normals: int, model: AnomalyModel, placer: SlicePlacer = BY_INDEX
) -> tuple[SliceSet, RangeExclusion]:
    """The held-out cases' slices placed by ``placer``, only those its range gate lets through."""
    cases = [
        phantom_case(FIRST_SEED + 100 * t + i, kind, model.resolution, model.window, placer=placer)
        for t, kind in enumerate((*ANOMALY_TYPES, "normal"))
        for i in range(normals if kind == "normal" else per_type)
    ]
    return in_range_only(concatenate(cases))


def training_slices(n: int, every: int, model: AnomalyModel, placer: SlicePlacer = BY_INDEX) -> SliceSet:
    """Every ``every``-th in-range slice of the first ``n`` phantoms the GAN trained on (seeds 1000+)."""
    cases = [phantom_case(TRAINING_SEED + i, "normal", model.resolution, model.window, placer=placer)
             for i in range(n)]  # fmt: skip
    slices, _ = in_range_only(concatenate(cases))
    return slices.subset(np.arange(len(slices)) % every == 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", type=Path, default=[DEFAULT_MODEL_PATH])
    parser.add_argument("--modes", nargs="+", default=["fast", "accurate"], help="fast, accurate, projector")
    parser.add_argument("--projector-steps", type=int, default=200, help="projector steps (NVlabs: 1000)")
    parser.add_argument("--per-type", type=int, default=1, help="held-out cases per anomaly type")
    parser.add_argument("--normals", type=int, default=2, help="held-out normal cases")
    parser.add_argument("--every", type=int, default=4, help="keep every n-th normal slice")
    parser.add_argument(
        "--training-normals",
        type=int,
        default=0,
        help="also the normal-body error on this many of the GAN's training phantoms (seeds 1000+): a "
        "generator that memorised its data draws them far better than held-out ones",
    )
    add_position_argument(parser)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for model_path in args.models:
        model = AnomalyModel.load(model_path, "cpu")
        placer = placer_for(model, args.position)
        slices, excluded = held_out_slices(args.per_type, args.normals, model, placer)
        excluded.announce(model_path.name, "reconstruction-error")
        # Every anomalous slice (the signal is rare) and every n-th of the others.
        keep = slices.anomaly.any(axis=(1, 2)) | (np.arange(len(slices.positions)) % args.every == 0)
        slices = slices.subset(keep)
        hu_per_unit = model.window.width / 2
        seen = (
            training_slices(args.training_normals, args.every, model, placer)
            if args.training_normals
            else None
        )
        for mode in args.modes:
            steps = args.projector_steps if mode == "projector" else None
            detector = GeneratorDetector(
                mode, model_path, InversionConfig(mode=mode, steps=steps), ScoreConfig()
            )
            start = time.perf_counter()
            reconstructions = detector.reconstruct(slices).images
            summary = error_summary(slices, reconstructions, hu_per_unit)
            seconds = round(time.perf_counter() - start, 1)
            row = {"model": str(model_path), "model_id": model.model_id, "mode": mode, "steps": steps,
                   "slices": int(keep.sum()), "seconds": seconds, "position": placer.method,
                   "range_gate": excluded.as_dict(), **summary}  # fmt: skip
            seen_text = ""
            if seen is not None:
                row["training_normal_body_hu"] = error_summary(
                    seen, detector.reconstruct(seen).images, hu_per_unit
                )["normal_body_hu"]
                seen_text = f", training phantoms' normal body {row['training_normal_body_hu']:6.1f} HU"
            rows.append(row)
            print(
                f"{model_path.name:32s} {mode:9s} normal body {summary['normal_body_hu']:6.1f} HU, "
                f"anomalies {summary['anomaly_hu']:6.1f} HU, ratio {summary['ratio']:.2f}{seen_text}",
                flush=True,
            )
    result = {
        "command": "python -m benchmarks.reconstruction_error " + " ".join(argv or []),
        "load_average_1min": os.getloadavg()[0],
        "first_seed": FIRST_SEED,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(args.out, json.dumps(result, indent=2).encode())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
