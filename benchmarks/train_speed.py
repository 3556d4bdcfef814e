"""GAN training throughput per architecture, precision and compilation: ``python -m benchmarks.train_speed``.

It times the real training step (:meth:`GanTrainer.train_step`: D step, G step, EMA; lazy R1 included at its
real interval) on random slices, after warm-up steps that absorb ``torch.compile``'s one-off compilation, and
reports images/s, the GFLOP of one full step per image (counted with ``torch.utils.flop_counter`` on the
eager step without R1) and the share of the machine's matmul peak at that precision (measured here with one
large matmul, so the number says how well the step uses *this* CPU, whatever its vector units are).

Results go to ``benchmarks/results/train_speed.json``. Time only on a quiet machine: the same code measures
3-7x slower while other jobs run (the load average is recorded next to the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from AnomalyScoutLib.atomic import write_bytes_atomic
from AnomalyScoutLib.nets.architecture import preset
from AnomalyScoutLib.train.data import SliceSet
from AnomalyScoutLib.train.gan import GanOptions, GanTrainer, autocast_dtype

__all__ = ["cpu_has_bf16_units", "main", "matmul_peak_gflops", "step_gflop_per_image"]

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "train_speed.json"


def cpu_has_bf16_units() -> bool:
    """True where oneDNN runs bf16 natively (AVX-512 BF16, AMX); elsewhere bf16 is emulated, ~10x slower."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def matmul_peak_gflops(dtype: torch.dtype, size: int = 1024, repeats: int = 5) -> float:
    """Best GFLOP/s of a square matmul at ``dtype``: the practical peak of this CPU at that precision."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def _trainer(config: str, precision: str, compile_: bool, batch: int, run_dir: Path) -> GanTrainer:
    architecture = preset(config)
    res = architecture.resolution
    images = (torch.rand(256, 1, res, res) * 2 - 1).to(torch.float16)
    data = SliceSet(images, torch.rand(256))
    options = GanOptions(
        kimg=1e6, batch=batch, augment="translation", precision=precision, compile=compile_, seed=0
    )
    return GanTrainer(architecture, options, data, run_dir, torch.device("cpu"))


def step_gflop_per_image(config: str, batch: int) -> float:
    """GFLOP of one eager fp32 training step (D + G, no R1) divided by the batch."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(config, "fp32", False, batch, Path(tmp))
        trainer.step = 1  # not a multiple of the R1 interval: the plain step
        counter = FlopCounterMode(display=False)
        with counter:
            trainer.train_step()
    return counter.get_total_flops() / batch / 1e9


def time_training(config: str, precision: str, compile_: bool, batch: int, warmup: int, steps: int) -> dict:
    """images/s of ``steps`` training steps after ``warmup`` steps (compile time reported separately)."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(config, precision, compile_, batch, Path(tmp))
        start = time.perf_counter()
        # Warm-up covers every graph the loop compiles: plain steps and one lazy-R1 step (step 0).
        for _ in range(warmup):
            trainer.train_step()
        warmup_s = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        elapsed = time.perf_counter() - start
    return {"images_per_s": steps * batch / elapsed, "warmup_s": warmup_s, "timed_steps": steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", default=["cpu-small", "cpu-mid"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--compile", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps first (compilation)")
    parser.add_argument("--steps", type=int, default=17, help="timed steps (17 spans one lazy R1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    skipped = {}
    if "bf16" in args.precisions and not cpu_has_bf16_units():
        # Measured once on this kind of machine (AVX2, no bf16 units): cpu-small 2.2 img/s in bf16 against
        # 19.2 in fp32. Not worth minutes of every run: recorded as skipped, with the reason.
        skipped["bf16"] = "this CPU has no bf16 units (oneDNN emulates bf16, about 9x slower than fp32)"
        args.precisions = [p for p in args.precisions if p != "bf16"]
    peaks = {p: matmul_peak_gflops(torch.float32 if p == "fp32" else torch.bfloat16) for p in args.precisions}
    rows: list[dict[str, Any]] = []
    for config in args.configs:
        gflop = step_gflop_per_image(config, args.batch)
        for precision in args.precisions:
            for compiled in args.compile:
                timing = time_training(
                    config, precision, compiled == "on", args.batch, args.warmup, args.steps
                )
                achieved = timing["images_per_s"] * gflop
                row = {
                    "config": config,
                    "channels": list(preset(config).channels),
                    "precision": precision,
                    "compile": compiled == "on",
                    "gflop_per_image": round(gflop, 3),
                    "achieved_gflops": round(achieved, 1),
                    "share_of_peak": round(achieved / peaks[precision], 3),
                    **timing,
                }
                rows.append(row)
                print(
                    f"{config:10s} {precision:5s} compile={compiled:3s} {timing['images_per_s']:6.1f} img/s "
                    f"{gflop:5.2f} GFLOP/img {row['share_of_peak']:.0%} of the {precision} peak "
                    f"(warm-up {timing['warmup_s']:.0f} s)",
                    flush=True,
                )
    result = {
        "command": "python -m benchmarks.train_speed " + " ".join(argv or []),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": args.threads,
            "load_average_1min": os.getloadavg()[0],
            "torch": torch.__version__,
        },
        "matmul_peak_gflops": {p: round(v, 1) for p, v in peaks.items()},
        "bf16_autocast_dtype_on_cpu": str(autocast_dtype("bf16", torch.device("cpu"))),
        "skipped": skipped,
        "rows": rows,
        "options": {k: v for k, v in vars(args).items() if k != "out"} | {"out": str(args.out)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(args.out, json.dumps(result, indent=2, default=str).encode())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
