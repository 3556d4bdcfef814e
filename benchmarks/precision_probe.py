"""Would bf16 pay in ``fast`` mode on CPU? Each network of the default model timed in fp32 and under CPU bf16
autocast, and how far the reconstructions and the head's slice scores move.

Usage (repository root, on a quiet machine: the timings mean nothing beside other jobs)::

    python -m benchmarks.precision_probe [--model models/default.safetensors] [--threads 2]

Issue 17 asks for bf16 "where it pays". The GAN's training gained from it (``docs/training.md``); whether
inference does depends on each network's shapes. A tumour phantom's first 96 slices (seed 9000, placed by
anatomy) go through the encoder, the generator and the head in batches of 32, as the engine runs them, in
fp32 and under ``torch.autocast("cpu", torch.bfloat16)``. The best of ``--repeats`` passes counts per network.
The agreement is what a calibration would have to absorb: the reconstructions' difference in HU and the
largest change of a slice score, beside the spread of the scores. Results:
``benchmarks/results/precision_probe.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from AnomalyScoutLib.model_file import AnomalyModel
from benchmarks.data import phantom_case
from benchmarks.results_io import RESULTS_DIR, placer_for, run_header, write_json

__all__ = ["main", "timed_pass"]

BATCH = 32
NETWORKS = ("encoder", "generator", "head")


def timed_pass(
    model: AnomalyModel, images: torch.Tensor, positions: torch.Tensor, body: torch.Tensor, precision: str
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """One fast-mode pass over the slices in batches: seconds per network, reconstructions, slice scores."""
    seconds = dict.fromkeys(NETWORKS, 0.0)

    @contextlib.contextmanager
    def timed(network: str) -> Iterator[None]:
        start = time.perf_counter()
        autocast = (
            torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        )
        with autocast:
            yield
        seconds[network] += time.perf_counter() - start

    reconstructions, scores = [], []
    with torch.inference_mode():
        for first in range(0, len(images), BATCH):
            part = slice(first, first + BATCH)
            x, p, b = images[part], positions[part], body[part]
            with timed("encoder"):
                ws = model.encoder(x[:, None].contiguous(memory_format=torch.channels_last), p).float()
            with timed("generator"):
                image = model.generator.synthesis(ws, noise_mode="const")[:, 0].float()
            with timed("head"):
                maps = model.head.anomaly_map(x, image, p, b).float()
            reconstructions.append(image)
            scores.append(model.head.slice_scores(maps, b))
    return seconds, torch.cat(reconstructions), torch.cat(scores)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/default.safetensors"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="passes per precision (the best counts)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "precision_probe.json")
    args = parser.parse_args(argv)
    started = time.time()
    if not args.model.is_file():
        print(f"precision_probe: no model file {args.model}", file=sys.stderr)
        return 1
    model = AnomalyModel.load(args.model, "cpu")
    if model.head is None:
        print(f"precision_probe: {args.model} has no anomaly-map head", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    for network in (model.encoder, model.generator, model.head):
        network.eval().requires_grad_(False).to(memory_format=torch.channels_last)
    slices = phantom_case(9000, "tumour", model.resolution, model.window, placer=placer_for(model, "auto"))
    keep = slice(0, 96)
    images, positions, body = (
        torch.from_numpy(np.ascontiguousarray(a[keep]))
        for a in (slices.images, slices.condition, slices.body)
    )
    best: dict[str, dict[str, float]] = {}
    outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for _ in range(args.repeats):
        for precision in ("fp32", "bf16"):
            seconds, reconstructions, scores = timed_pass(model, images, positions, body, precision)
            previous = best.get(precision, dict.fromkeys(NETWORKS, float("inf")))
            best[precision] = {n: min(previous[n], seconds[n]) for n in NETWORKS}
            outputs[precision] = (reconstructions, scores)
    hu = (outputs["bf16"][0] - outputs["fp32"][0]).abs() * model.window.width / 2
    score_change = (outputs["bf16"][1] - outputs["fp32"][1]).abs()
    fp32_scores = outputs["fp32"][1]
    rows = {
        precision: {
            **{f"{n}_s": round(v, 3) for n, v in times.items()},
            "total_s": round(sum(times.values()), 3),
        }
        for precision, times in best.items()
    }
    result = {
        **run_header("precision_probe", "precision_probe", argv, started),
        "model": str(args.model),
        "threads": args.threads,
        "load_average": [round(v, 1) for v in os.getloadavg()],
        "slices": len(images),
        "seconds_per_96_slices": rows,
        "speed_up": round(rows["fp32"]["total_s"] / rows["bf16"]["total_s"], 2),
        "reconstruction_change_hu": {"mean": float(hu.mean()), "max": float(hu.max())},
        "slice_score_change_max": float(score_change.max()),
        "slice_score_range_fp32": [float(fp32_scores.min()), float(fp32_scores.max())],
    }
    for precision, row in rows.items():
        print(f"[precision_probe] {precision}: {row}")
    print(
        f"[precision_probe] bf16 {result['speed_up']}x; reconstructions move {hu.mean():.2f} HU on average "
        f"(at most {hu.max():.1f}); slice scores by at most {score_change.max():.3f}"
    )
    write_json(result, args.out)
    print(f"[precision_probe] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
