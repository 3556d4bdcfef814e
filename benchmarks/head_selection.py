"""Which snapshot of a head's training finds anomalies best? Chosen on validation phantoms.

Usage: ``python -m benchmarks.head_selection --model MODEL --snapshots RUN/snapshots [--write OUT]``, where
``MODEL`` and ``RUN`` are the ``--out`` and ``--run`` of one ``anomalyscout train-head --snapshots`` run.

Head training keeps the weights that best find a held-out *synthetic* family (``poisson_patch``). That
criterion does not carry over to the anomalies users have: on the same held-out phantoms, two heads that
validated higher on it tested lower (a DRAEM head 0.778 against 0.714, an atlas-reading head 0.751 against
0.714; ``docs/benchmarks.md``, section 6). So the rule that chooses the GAN's checkpoints
(:mod:`benchmarks.model_selection`: the mean over anomaly types of the slice AUROC on the validation phantoms,
seeds 7000+, never a test seed) chooses among the head's snapshots too; the phantom's anomaly inserters only
*choose*, they never train. The snapshots share the model's generator and encoder, so the reconstructions are
made once and each snapshot costs one head pass. With ``--write`` the chosen head replaces the model's (its
record says how it was chosen; the calibration is dropped: run ``anomalyscout calibrate``). Results go to
``benchmarks/results/head_selection.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from AnomalyScoutLib.anomaly_map.head import HEAD_KEY, AnomalyHead, HeadConfig
from AnomalyScoutLib.anomaly_map.training import HEAD_WEIGHTS_KEY, attach_head
from AnomalyScoutLib.model_file import AnomalyModel, stored_in_half
from benchmarks.head_detector import HeadRun, head_run
from benchmarks.model_selection import VALIDATION_FIRST_SEED, validation_set
from benchmarks.phantom_track import method_summary
from benchmarks.results_io import RESULTS_DIR, add_position_argument, run_header, write_json

__all__ = ["load_snapshot", "main"]

TRACK = "head-selection"

#: The row of the model file's own head (the one its training kept) in the results.
OWN_HEAD = "model's head (kept by the synthetic validation)"


def load_snapshot(path: Path, model: AnomalyModel) -> tuple[AnomalyHead, dict[str, Any]]:
    """A snapshot's head (linked to ``model``'s atlas when it reads one) and its header."""
    with safe_open(str(path), framework="pt") as handle:
        header = json.loads((handle.metadata() or {})[HEAD_WEIGHTS_KEY])
        state = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    head = AnomalyHead(HeadConfig.from_dict(header["config"]))
    head.load_state_dict(state)
    head.read_atlas(model.atlas if head.config.use_atlas else None)
    return head.eval().requires_grad_(False), header


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, required=True, help="the model file train-head --snapshots wrote"
    )
    parser.add_argument("--snapshots", type=Path, required=True, help="train-head's RUN/snapshots folder")
    parser.add_argument("--per-type", type=int, default=2, help="validation cases per anomaly type")
    parser.add_argument("--normal-cases", type=int, default=2, help="normal validation controls")
    parser.add_argument("--write", type=Path, help="write the model with the chosen head here")
    add_position_argument(parser)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "head_selection.json")
    args = parser.parse_args(argv)
    paths = sorted(args.snapshots.glob("step-*.safetensors"))
    if not paths:
        parser.exit(
            1, f"error: {args.snapshots} holds no step-*.safetensors snapshot (train-head --snapshots)\n"
        )
    torch.set_num_threads(args.threads)
    started = time.time()
    validation = validation_set(args.model, args.per_type, args.normal_cases, args.position)
    slices, key = validation.slices, validation.key
    own = head_run(OWN_HEAD, args.model, slices, key)
    rows = {OWN_HEAD: method_summary(OWN_HEAD, slices, own.method_run().detection, TRACK)}
    heads: dict[str, AnomalyHead] = {}
    for path in paths:
        heads[path.stem], header = load_snapshot(path, own.reconstructions.detector.model)
        detection = HeadRun(path.stem, own.reconstructions, head=heads[path.stem]).method_run().detection
        rows[path.stem] = {**method_summary(path.stem, slices, detection, TRACK),
                           "synthetic_validation": header.get("row")}  # fmt: skip
    chosen = max(heads, key=lambda name: rows[name]["mean_type_auroc"])
    print(f"[head-selection] chosen {chosen} ({rows[chosen]['mean_type_auroc']:.3f}; the model's own head: "
          f"{rows[OWN_HEAD]['mean_type_auroc']:.3f})")  # fmt: skip
    if args.write is not None:
        model = AnomalyModel.load(args.model, "cpu")
        record = {**model.metadata[HEAD_KEY]["training"], "snapshots": str(args.snapshots), "chosen": chosen,
                  "chosen_by": "mean slice AUROC over anomaly types on validation phantoms "
                  f"(seeds {VALIDATION_FIRST_SEED}+, benchmarks/head_selection.py)"}  # fmt: skip
        attach_head(model, heads[chosen], record)  # drops the calibration
        model.save(args.write, half=stored_in_half(args.model))
        print(f"[head-selection] wrote {args.write} (not calibrated: run anomalyscout calibrate)")
    write_json(
        {
            **run_header("head_selection", "head_selection", argv, started),
            "model": str(args.model),
            "snapshots": str(args.snapshots),
            "validation": validation.description,
            "criterion": "highest mean over anomaly types of the slice AUROC",
            "rows": rows,
            "chosen": chosen,
        },
        args.out,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
