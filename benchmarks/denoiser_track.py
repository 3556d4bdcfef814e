"""The denoiser as the product uses it: an opinion beside the head and the atlas, on held-out phantoms.

Usage (repository root; minutes once the phantom and reconstruction caches exist)::

    nice -n 10 python -m benchmarks.denoiser_track --model runs/default-denoiser.safetensors \\
        [--base models/default.safetensors] [--per-type 30] [--searched 20] [--others OTHER.safetensors ...]

A coarse-noise denoising U-Net (Kascenas et al., 2023; ``AnomalyScoutLib/denoiser.py``) was first tried as a
probe on the 120 cases of ``benchmarks.head_comparison`` (20 per type, seeds 9000-9019 of each block), where
it beat the head. Those cases saw the probe's few choices (checkpoint length, noise scales, per-case
normalisation), so this asks again on ``--per-type`` cases, and reports the first ``--searched`` per type
(the probe's) apart from the rest (fresh). Each opinion's slice score becomes a percentile among the
calibration normals near its position; a combination is the larger percentile, made a percentile again among
the normals' own (``combine_opinions`` flags a slice when any opinion does). The head and the atlas are the
base model's (its cached ``fast`` reconstructions), the denoiser is ``--model``'s. Also reported: how far the
denoiser's output is from the slice in the normal body and in the anomalies (the reconstruction-error
measure of ``benchmarks.reconstruction_error``, issue 17's targets: normal <= 25 HU, ratio >= 3).
``--others``: more model files whose denoisers are scored alone on the same cases (a longer run, other
noise scales), each as ``denoiser (FILE STEM)``, with its output error; ``--reference`` names the row the
paired differences are taken from (default: the product before, the first row).
Results: ``benchmarks/results/denoiser_track.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from AnomalyScoutLib.denoiser import Denoiser
from AnomalyScoutLib.model_file import AnomalyModel
from benchmarks.ensemble import percentile_test_set
from benchmarks.map_level_probe import combined_percentiles, map_scores, part_rows
from benchmarks.reconstruction_error import error_summary
from benchmarks.results_io import RESULTS_DIR, run_header, write_json
from benchmarks.slices import SliceSet

__all__ = ["denoised", "main"]

#: The opinions compared, each the larger percentile of its parts; the first is the reference.
COMBINATIONS: dict[str, tuple[str, ...]] = {
    "max(head, atlas) (the product before)": ("top-k", "atlas"),
    "head top-k": ("top-k",),
    "atlas": ("atlas",),
    "denoiser": ("denoiser",),
    "max(head, denoiser)": ("top-k", "denoiser"),
    "max(head, atlas, denoiser) (the product now)": ("top-k", "atlas", "denoiser"),
}


@torch.inference_mode()
def denoised(denoiser: Denoiser, slices: SliceSet, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The denoiser's output for every slice, and each slice's score (top of its residual in the body)."""
    outputs, scores = [], []
    for i in range(0, len(slices), batch):
        images = torch.from_numpy(slices.images[i : i + batch])
        body = torch.from_numpy(slices.body[i : i + batch])
        outputs.append(denoiser(images).float().numpy())
        scores.append(denoiser.slice_scores(images, body).numpy())
    return np.concatenate(outputs), np.concatenate(scores).astype(np.float64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="model file holding the denoiser")
    parser.add_argument(
        "--base", type=Path, default=Path("models/default.safetensors"), help="model of the head and atlas"
    )
    parser.add_argument("--per-type", type=int, default=30, help="held-out cases per type (and controls)")
    parser.add_argument("--searched", type=int, default=20, help="first cases per type the probe saw")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--others", nargs="*", type=Path, default=[], help="more denoisers, scored alone")
    parser.add_argument("--reference", default=None, help="row the paired differences are taken from")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "denoiser_track.json")
    args = parser.parse_args(argv)
    started = time.time()
    missing = [str(p) for p in (args.model, args.base, *args.others) if not p.is_file()]
    if missing:
        print(f"denoiser_track: no file {', '.join(missing)}", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    denoiser = AnomalyModel.load(args.model, "cpu").denoiser
    chosen = percentile_test_set(args.base, args.per_type)
    if denoiser is None or chosen.model.head is None or chosen.model.atlas is None:
        print(f"denoiser_track: needs a denoiser in {args.model}, a head and an atlas in {args.base}")
        return 1
    normals, test = chosen.normals, chosen.data.test
    normal_run, test_run = chosen.fast_runs(args.base)
    normal, theirs = map_scores(normal_run, normals), map_scores(test_run, test)
    normal["denoiser"] = denoised(denoiser, normals)[1]
    outputs, theirs["denoiser"] = denoised(denoiser, test)
    window_hu = chosen.model.window.width / 2
    combinations, other_errors = dict(COMBINATIONS), {}
    for path in args.others:
        other = AnomalyModel.load(path, "cpu").denoiser
        if other is None:
            print(f"denoiser_track: {path} has no denoiser")
            return 1
        name = f"denoiser ({path.stem})"
        normal[name] = denoised(other, normals)[1]
        other_outputs, theirs[name] = denoised(other, test)
        combinations[name] = (name,)
        other_errors[name] = error_summary(test, other_outputs, window_hu)
    if args.reference is not None:
        if args.reference not in combinations:
            print(f"denoiser_track: --reference must be one of {', '.join(combinations)}")
            return 1
        combinations = {args.reference: combinations[args.reference], **combinations}
    scores = combined_percentiles(normal, normals.positions, theirs, test.positions, combinations)
    index = np.array([test.cases[c].seed % 100 for c in test.case])
    parts = {
        f"first {args.searched} per type (the probe's cases)": index < args.searched,
        f"last {args.per_type - args.searched} per type (fresh)": index >= args.searched,
        f"all {args.per_type} per type": np.ones(len(index), dtype=bool),
    }
    types = chosen.data.split.types
    results = {name: part_rows(test, scores, keep, types, "denoiser") for name, keep in parts.items()}
    reference = next(iter(combinations))
    for name, result in results.items():
        for method, interval in result["bootstrap"]["difference_from_first_ci95"].items():
            print(f"[denoiser] {name}: {method} minus {reference}: {interval[0]:+.3f} to {interval[1]:+.3f}")
    errors: dict[str, Any] = error_summary(test, outputs, window_hu)
    normal_hu, anomaly_hu = errors["normal_body_hu"], errors["anomaly_hu"]
    print(f"[denoiser] its output: normal body {normal_hu:.1f} HU off, anomalies {anomaly_hu:.1f} HU")
    write_json(
        {
            **run_header("denoiser_track", "denoiser_track", argv, started),
            "model": str(args.model),
            "base": str(args.base),
            "denoiser": denoiser.config.to_dict(),
            "score": "each opinion's percentile among calibration normals near the slice's position; "
            "combinations: the larger percentile, made a percentile among the normals' own",
            "test_cases": len(test.cases),
            "parts": results,
            "denoiser_error_hu": errors,
            "others": {str(path): f"denoiser ({path.stem})" for path in args.others},
            "others_error_hu": other_errors,
        },
        args.out,
    )
    print(f"[denoiser] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
