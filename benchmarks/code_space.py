"""Does a smaller code space keep lesions out of the reconstruction?

Usage: ``python -m benchmarks.code_space --model M``.

The wider generator draws normal anatomy better, and the anomalies just as well: its anomaly-to-normal
error ratio fell to 1.0 (``docs/training.md``). A W+ code (one w per synthesis layer) is expressive enough to
paint a low-contrast lesion back in. This probe shrinks the code space the encoder's output may use, without
retraining anything:

* ``offset_scale`` s: ``ws = mean_w(p) + s * offset``. The encoder predicts offsets from the generator's mean
  latent at the slice's position; s < 1 is the truncation trick applied to the encoding, pulling every
  reconstruction towards the typical slice at that position.
* ``single_w``: the offsets averaged over the synthesis layers, so all layers share one w (W instead of W+).

Both are linear in the encoder's last layer (:meth:`Encoder.constrain`, also ``train-encoder --offset-scale S
--single-w``), so each variant is an ordinary model file (its last layer's weights transformed), scored by
:mod:`benchmarks.model_selection`'s harness on the same validation phantoms. The accurate mode of each variant
starts its refinement from the constrained code, in W+ as shipped; with ``--accurate-latent w`` it refines in
W instead. Results go to ``benchmarks/results/code_space.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from AnomalyScoutLib.inversion import InversionConfig
from AnomalyScoutLib.model_file import AnomalyModel, stored_in_half
from AnomalyScoutLib.train.encoder import narrow_code_space
from benchmarks.model_selection import evaluate_candidates
from benchmarks.results_io import RESULTS_DIR, add_position_argument, run_header, write_json

__all__ = ["main", "write_variants"]


def _variant_name(offset_scale: float, single_w: bool) -> str:
    return f"{'w' if single_w else 'wplus'}-s{offset_scale:g}"


def write_variants(model_path: Path, scales: list[float], out_dir: Path) -> dict[str, dict[str, Any]]:
    """One model file per (offset scale, W or W+) in ``out_dir``, in the source file's precision.

    Returns:
        Each written file's path (as text) and its ``code_space`` record.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    half = stored_in_half(model_path)
    variants = {}
    for single_w in (False, True):
        for scale in scales:
            model = AnomalyModel.load(model_path, "cpu")
            narrow_code_space(model, scale, single_w)
            path = model.save(out_dir / f"{_variant_name(scale, single_w)}.safetensors", half=half)
            variants[str(path)] = model.metadata["training"]["encoder"]["code_space"]
    return variants


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="model file whose encoder is constrained")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.7, 0.5, 0.3])
    parser.add_argument("--modes", nargs="+", choices=("fast", "accurate"), default=["fast", "accurate"])
    parser.add_argument("--accurate-latent", choices=("w", "w+"), default="w+")
    parser.add_argument("--accurate-steps", type=int, default=None, help="default: the product's")
    parser.add_argument("--work", type=Path, default=Path("runs/code-space"), help="variant model files")
    add_position_argument(parser)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "code_space.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    variants = write_variants(args.model, args.scales, args.work)
    available = {
        "fast": InversionConfig(mode="fast"),
        "accurate": InversionConfig(mode="accurate", latent=args.accurate_latent, steps=args.accurate_steps),
    }
    inversions = {mode: available[mode] for mode in args.modes}
    result = evaluate_candidates([Path(path) for path in variants], inversions, position=args.position)
    for candidate in result["candidates"]:
        candidate["code_space"] = variants[candidate["path"]]
    write_json(
        {
            **run_header("code_space", "code_space", argv, started),
            "model": str(args.model),
            "inversions": {mode: repr(config) for mode, config in inversions.items()},
            **result,
        },
        args.out,
    )
    for c in result["candidates"]:
        means = ", ".join(f"{mode} {c[mode]['mean_type_auroc']:.3f}" for mode in inversions)
        print(f"{Path(c['path']).name}: mean AUROC over types: {means}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
