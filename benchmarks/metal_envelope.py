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
from AnomalyScoutLib.commands.calibrate import DEFAULT_PHANTOM_SEED
from AnomalyScoutLib.engine import ScoreOptions, VolumeScorer, score_file
from AnomalyScoutLib.intensity_envelope import METADATA_KEY, IntensityEnvelope, highest_body_hu
from AnomalyScoutLib.inversion import InversionConfig
from AnomalyScoutLib.io.volume import write_volume
from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.phantom import make_phantom
from AnomalyScoutLib.scoring import ScoreConfig
from benchmarks.data import PhantomSplit
from benchmarks.results_io import RESULTS_DIR, run_header, write_json

__all__ = ["main"]

SHAPE_XYZ = (256, 256, 100)
REAL_SCAN = Path(__file__).resolve().parents[1] / "Testing/Data/totalsegmentator_abdomen/example_ct.nii.gz"


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


def _run(scorer: VolumeScorer, path: Path, out: Path) -> list[dict[str, Any]]:
    score_file(path, out, scorer, ScoreOptions())
    return json.loads((out / "scores.json").read_text())["slices"]


def _type_metrics(rows: list[dict[str, Any]], kind: str) -> dict[str, float]:
    """Slice AUROC, share flagged and cases flagged of one anomaly type against the controls' slices."""
    chosen = [r for r in rows if r["kind"] in (kind, "normal") and r["in_range"]]
    labels = np.array([r["anomalous"] for r in chosen])
    ranking = np.array([(r["percentile"] or 0.0) + 1e-6 * r["score"] for r in chosen])
    flagged = np.array([r["flagged"] for r in chosen])
    cases = {r["case"] for r in chosen if r["kind"] == kind}
    return {
        "slice_auroc": metrics.roc_auc(labels, ranking),
        "flagged_share": float(flagged[labels].mean()),
        "cases_flagged": sum(any(r["flagged"] for r in chosen if r["case"] == c) for c in cases),
        "cases": len(cases),
    }


def _phantom_rows(scorers: dict[str, VolumeScorer], split: PhantomSplit, work: Path) -> dict[str, list]:
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in scorers}
    for seed, kind in tqdm(split.test_cases, desc="test cases", unit="case"):
        case = make_phantom(seed, shape_xyz=SHAPE_XYZ, anomalies=() if kind == "normal" else (kind,))
        path = work / f"{kind}-{seed}.nrrd"
        write_volume(case.volume, path)
        for name, scorer in scorers.items():
            for k, entry in enumerate(_run(scorer, path, work / f"{kind}-{seed}-{name}")):
                rows[name].append(
                    {**entry, "kind": kind, "case": seed, "anomalous": bool(case.slice_labels[k])}
                )
        path.unlink()
    return rows


def _summary(rows: list[dict[str, Any]], types: tuple[str, ...]) -> dict[str, Any]:
    per_type = {kind: _type_metrics(rows, kind) for kind in types}
    controls = [r for r in rows if r["kind"] == "normal" and r["in_range"]]
    return {
        "per_type": per_type,
        "mean_type_auroc": float(np.mean([m["slice_auroc"] for m in per_type.values()])),
        "false_flags_on_controls": sum(r["flagged"] for r in controls),
        "control_slices": len(controls),
        "slices_beyond_envelope_on_controls": sum(bool(r["beyond_normal_mm2"]) for r in controls),
    }


def _real_scan(scorers: dict[str, VolumeScorer], work: Path) -> dict[str, Any]:
    result = {}
    for name, scorer in scorers.items():
        slices = _run(scorer, REAL_SCAN, work / f"real-{name}")
        result[name] = {
            "flagged": [s["slice_index"] for s in slices if s["flagged"]],
            "beyond_envelope": [s["slice_index"] for s in slices if s["beyond_normal_mm2"]],
            "in_range": sum(s["in_range"] for s in slices),
        }
    return result


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
    split = PhantomSplit(per_type=args.per_type, n_normal=args.normals)
    with tempfile.TemporaryDirectory(prefix="metal-envelope-") as work:
        rows = _phantom_rows(scorers, split, Path(work))
        real = _real_scan(scorers, Path(work))
    results = {
        **run_header("metal_envelope", "metal_envelope", argv, started),
        "model_id": scorers["none"].model.model_id,
        "envelopes": {name: None if e is None else e.to_json() for name, e in envelopes.items()},
        "test_cases": split.as_dict()["test_cases"],
        "phantoms": {name: _summary(r, split.types) for name, r in rows.items()},
        "real_scan": real,
    }
    write_json(results, args.out)
    print(f"[metal-envelope] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
