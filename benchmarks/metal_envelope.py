"""Metal envelope: the product end to end on held-out phantoms and a real scan, with and without it.

Usage (repository root; niced, it is CPU work)::

    nice -n 10 python -m benchmarks.metal_envelope --model models/default.safetensors \
        [--per-type 4 --normals 4]

The networks see CT through a soft-tissue window, so metal is invisible to the residual
(:mod:`AnomalyScoutLib.intensity_envelope`). This runs ``anomalyscout score``'s own function
(:func:`AnomalyScoutLib.engine.score_file`, fast mode, the model's calibration and default false-positive
rate) on every case three times, changing only the envelope in the model's metadata:

- **none**: the model as calibrated before the envelope existed;
- **product**: fitted on ``--fit-cases`` held-out normal phantoms (seeds 900000+, the test cases' grid) with
  the product's floor of 2000 HU (real cortical bone; what ``anomalyscout calibrate`` stores by default);
- **phantom-fitted**: the same normals without the floor (``--envelope-floor-hu`` set below them): what a
  site gets whose normals are the same kind of scan as those it scores. Fitted on normals only; the phantom's
  anomaly inserters are the test.

Test cases are the phantom track's (seeds 9000+, ``--per-type`` per anomaly type, ``--normals`` controls, 256
x 256 x 100). Per variant and type: slice AUROC of the calibrated percentile (the product's ranking, raw score
breaking ties) against the controls' slices, the share of anomalous slices flagged, false flags among the
controls' slices, and cases flagged. The real scan
(``Testing/Data/totalsegmentator_abdomen/example_ct.nii.gz``, with a metal hip implant in its lowest slices)
is scored the same three ways: which slices are flagged, and which of them by the envelope. Writes
``benchmarks/results/metal_envelope.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from AnomalyScoutLib.commands.calibrate import DEFAULT_PHANTOM_SEED
from AnomalyScoutLib.engine import VolumeScorer
from AnomalyScoutLib.intensity_envelope import METADATA_KEY, IntensityEnvelope, highest_body_hu
from AnomalyScoutLib.inversion import InversionConfig
from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.phantom import make_phantom
from AnomalyScoutLib.scoring import ScoreConfig
from benchmarks.data import PhantomSplit
from benchmarks.product_track import SHAPE_XYZ, evaluate_scorers
from benchmarks.results_io import RESULTS_DIR, run_header, write_json

__all__ = ["main"]


def _envelopes(fit_cases: int) -> dict[str, IntensityEnvelope | None]:
    """The three variants: none, the product's (floored) and the phantom-fitted one, from the same normals."""
    highest = []
    seeds = range(DEFAULT_PHANTOM_SEED, DEFAULT_PHANTOM_SEED + fit_cases)
    for seed in tqdm(seeds, desc="fitting", unit="case"):
        highest.append(highest_body_hu(make_phantom(seed, shape_xyz=SHAPE_XYZ).volume.array_zyx))
    return {
        "none": None,
        "product": IntensityEnvelope.fit(highest),
        "phantom-fitted": IntensityEnvelope.fit(highest, floor_hu=-np.inf),
    }


def _scorers(model_path: Path, envelopes: dict[str, IntensityEnvelope | None]) -> dict[str, VolumeScorer]:
    scorers = {}
    for name, envelope in envelopes.items():
        model = AnomalyModel.load(model_path, "cpu")
        model.metadata.pop(METADATA_KEY, None)
        if envelope is not None:
            model.metadata[METADATA_KEY] = envelope.to_json()
        scorers[name] = VolumeScorer(model, InversionConfig(mode="fast"), ScoreConfig(), torch.device("cpu"))
    return scorers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/default.safetensors"))
    parser.add_argument("--fit-cases", type=int, default=6, help="normal phantoms the envelope is fitted on")
    parser.add_argument("--per-type", type=int, default=4, help="test cases per anomaly type")
    parser.add_argument("--normals", type=int, default=4, help="normal test cases")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "metal_envelope.json")
    args = parser.parse_args(argv)
    started = time.time()
    if not args.model.is_file():
        print(f"metal-envelope: no model file {args.model}", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    envelopes = _envelopes(args.fit_cases)
    scorers = _scorers(args.model, envelopes)
    evaluation = evaluate_scorers(scorers, PhantomSplit(per_type=args.per_type, n_normal=args.normals))
    results = {
        **run_header("metal_envelope", "metal_envelope", argv, started),  # after the work: its wall time
        "model_id": scorers["none"].model.model_id,
        "envelopes": {name: None if e is None else e.to_json() for name, e in envelopes.items()},
        **evaluation,
    }
    write_json(results, args.out)
    print(f"[metal-envelope] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
