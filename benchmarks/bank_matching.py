"""Patch matching against a bank of normal slices: real normal phantoms, or slices the generator draws.

Usage (repository root; niced, it is CPU work, about 15 minutes on one core)::

    nice -n 10 python -m benchmarks.bank_matching [--model models/default.safetensors] [--samples 8]

Why: the residual asks the generator to redraw *this* patient's bowel gas and organ edges where they are,
which a normal model cannot know (docs/benchmarks.md, section 7). A weaker question forgives that: is each
patch like *some* normal patch from near the same place (:class:`benchmarks.baselines.patch_match.
LocalPatchMatch`)? Rows, on the anomaly-map track's 24 test cases (every 4th slice, placed by anatomy):

- **atlas**: the per-position mean/spread baseline, for reference;
- **patch-match, real bank**: the 24 training slices nearest in position from the 6 normal training phantoms;
- **patch-match, reconstruction**: the bank is the slice's own fast-mode reconstruction (the residual made
  tolerant of small shifts and judged by patches);
- **patch-match, reconstruction + N drawn**: plus N slices the generator draws at the slice's position, its
  encoded code with the layers from ``--mix-from`` on replaced by random ones (style mixing: the same coarse
  anatomy, other fine detail such as where the gas lies).

Writes ``benchmarks/results/bank_matching.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.aggregation import slice_scores
from benchmarks.baselines.atlas import PositionAtlas
from benchmarks.baselines.patch_match import LocalPatchMatch
from benchmarks.detectors import Detection
from benchmarks.phantom_track import method_summary, phantom_data
from benchmarks.results_io import RESULTS_DIR, placer_for, run_header, write_json
from benchmarks.slices import SliceSet

__all__ = ["drawn_bank_detection", "main"]

TRACK = "bank-matching"


def drawn_bank_detection(
    model: Any, slices: SliceSet, samples: int, mix_from: int, matcher: LocalPatchMatch, seed: int = 0
) -> Detection:
    """Patch-match maps of ``slices`` against each one's fast reconstruction and ``samples`` style-mixed
    drawings of the generator (``samples=0``: the reconstruction alone)."""
    generator, encoder = model.generator, model.encoder
    rng = torch.Generator().manual_seed(seed)
    maps = np.zeros(slices.images.shape, dtype=np.float32)
    with torch.inference_mode():
        for start in tqdm(range(0, len(slices), 16), desc=f"bank of {samples} drawn", unit="batch"):
            batch = slice(start, min(start + 16, len(slices)))
            x = torch.from_numpy(slices.images[batch])
            position = torch.from_numpy(slices.condition[batch])
            ws = encoder(x[:, None], position).float()
            reconstructions = generator.synthesis(ws, noise_mode="const")[:, 0]
            for j in range(len(x)):
                bank = [reconstructions[j : j + 1]]
                if samples:
                    z = torch.randn(samples, generator.z_dim, generator=rng)
                    mixed = ws[j : j + 1].repeat(samples, 1, 1)
                    mixed[:, mix_from:] = generator.mapping(z, position[j].repeat(samples))[:, mix_from:]
                    bank.append(generator.synthesis(mixed, noise_mode="random")[:, 0])
                i = start + j
                image = torch.from_numpy(np.where(slices.body[i], slices.images[i], -1.0).astype(np.float32))
                rms = matcher.distance(image, torch.cat(bank)).sqrt().numpy()
                maps[i] = np.where(slices.body[i], rms / matcher.scale, 0.0)
    return Detection(maps=maps, slice_scores=slice_scores(maps, slices.body))


def main(argv: list[str] | None = None) -> int:
    from AnomalyScoutLib.model_file import AnomalyModel

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/default.safetensors"))
    parser.add_argument("--samples", type=int, default=8, help="drawn slices per test slice")
    parser.add_argument("--mix-from", type=int, default=0, help="first W+ layer taken from the random code")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "bank_matching.json")
    args = parser.parse_args(argv)
    started = time.time()
    if not args.model.is_file():
        print(f"bank-matching: no model file {args.model}", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    model = AnomalyModel.load(args.model, "cpu")
    data_args = argparse.Namespace(train_cases=6, per_type=4, normal_cases=4, stride=4, resolution=128)
    data = phantom_data(data_args, model.window, placer_for(model, "auto"))
    rows = []
    for name, detector in (("atlas", PositionAtlas()), ("patch-match, real bank", LocalPatchMatch())):
        clock = time.time()
        detector.fit(data.train)
        detection = detector.detect(data.test)
        rows.append({**method_summary(name, data.test, detection, TRACK), "seconds": time.time() - clock})
    for samples in (0, args.samples):
        clock = time.time()
        detection = drawn_bank_detection(model, data.test, samples, args.mix_from, LocalPatchMatch())
        name = "patch-match, reconstruction" + (f" + {samples} drawn" if samples else "")
        rows.append({**method_summary(name, data.test, detection, TRACK), "seconds": time.time() - clock})
    results = {
        **run_header("bank_matching", "bank_matching", argv, started),
        "model_id": model.model_id,
        "test_cases": data.split.as_dict()["test_cases"],
        "slices": len(data.test),
        "rows": rows,
    }
    write_json(results, args.out)
    print(f"[bank-matching] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
