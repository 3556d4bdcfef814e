"""Speed and memory of the scoring engine, measured in one run on one machine: ``python -m benchmarks.speed``.

What it measures (issue 4's targets in brackets):

* slices/s of ``fast`` [>= 100 on 2 CPU cores at 128²], ``accurate`` with K = 20 and 50 refinement steps, and
  the ``projector`` (1000 steps from the mean latent) on the shipped model;
* the slice AUROC of each mode on the same slices of a few held-out phantom cases (anomalous slices and the
  same slices of the same phantom without its anomaly), and the speed ratio projector / accurate
  [accurate >= 20x faster at equal or better AUROC];
* ``anomalyscout score --mode fast`` end to end on a 512x512x300 CT as a user runs it, in a process of its
  own: wall time (median of ``--end-to-end-repeats`` runs) [< 5 s on 2 CPU cores], its CPU time (all threads,
  user + sys) and the cores it kept busy on average, and the engine's own stage timings;
* peak resident memory of ``anomalyscout score`` on a 512x512x600 volume, in a separate process sampled with
  psutil [< 3 GB];
* on a machine with CUDA, a 300-slice 512x512 CT scored end to end in fast mode with an (untrained) 512²
  model [< 10 s]; elsewhere the reason it was skipped;
* with ``--sweep``: AUROC of ``accurate`` over refinement steps and learning rates (how the defaults in
  :mod:`AnomalyScoutLib.inversion` were chosen).

Slices are placed as ``anomalyscout score --position`` places them (the same option and default; the
end-to-end runs get it too), and the slices its range gate would not score are left out of the AUROC's slices.

Results go to ``benchmarks/results/speed.json`` and ``docs/speed.md``. The machine is shared, so run it niced
and read the recorded load average next to the numbers: ``nice -n 15 python -m benchmarks.speed``.

``python -m benchmarks.speed --only-end-to-end`` measures the end-to-end run alone (a minute on a quiet
machine) and writes ``benchmarks/results/speed_end_to_end.json``; wall times mean something only on a quiet
machine (``load_average`` is recorded with them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import SimpleITK as sitk
import torch

from AnomalyScoutLib.atomic import atomic_destination
from AnomalyScoutLib.inversion import DEFAULT_ACCURATE_LR, DEFAULT_ACCURATE_STEPS, MODES, InversionConfig
from AnomalyScoutLib.metrics import roc_auc
from AnomalyScoutLib.model_file import DEFAULT_MODEL_PATH, AnomalyModel
from AnomalyScoutLib.nets.architecture import preset
from AnomalyScoutLib.precision import PRECISIONS
from AnomalyScoutLib.scoring import ScoreConfig
from benchmarks.data import BY_INDEX, SlicePlacer, in_range_only, phantom_case
from benchmarks.ours import GeneratorDetector
from benchmarks.results_io import add_position_argument, placer_for
from benchmarks.slices import SliceSet, concatenate

__all__ = ["main"]

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "speed.json"
END_TO_END_RESULTS = REPO / "benchmarks" / "results" / "speed_end_to_end.json"
DOC = REPO / "docs" / "speed.md"
#: Held-out phantom cases (seeds far from the shipped model's training seeds 1000-1029).
CASES = (
    (9501, "tumour"),
    (9502, "metal"),
    (9503, "blob"),
    (9504, "ascites"),
    (9505, "tumour"),
    (9506, "blob"),
)
CASE_SHAPE_XYZ = (128, 128, 48)


def evaluation_slices(
    model: AnomalyModel, n_cases: int, per_case: int, seed: int = 0, placer: SlicePlacer = BY_INDEX
) -> SliceSet:
    """Per case up to ``per_case / 2`` anomalous slices and the *same* slices of the case without its anomaly.

    The phantom without anomalies of the same seed is voxel for voxel the same anatomy, so each normal slice
    sits at the same position as its anomalous twin: the AUROC then measures whether the anomaly raises the
    score, not whether some body regions reconstruct worse than others. Slices are placed by ``placer``, and
    only slices the range gate lets through in both cases are drawn (the product scores no others).
    """
    rng = np.random.default_rng(seed)
    parts = []
    for case_seed, kind in CASES[:n_cases]:
        case, twin = (
            phantom_case(case_seed, k, model.resolution, model.window, CASE_SHAPE_XYZ, placer)
            for k in (kind, "normal")
        )
        anomalous = np.flatnonzero(case.labels & case.in_range & twin.in_range)
        keep = np.sort(rng.choice(anomalous, min(len(anomalous), per_case // 2), replace=False))
        parts += [case.subset(keep), twin.subset(keep)]
    return concatenate(parts)


def measure_mode(
    model_path: Path, slices: SliceSet, inversion: InversionConfig, batch_size: int, repeats: int = 1
) -> dict[str, Any]:
    """Reconstruct and score ``slices``; slices/s of the reconstruction and the slice AUROC.

    With ``repeats`` > 1 the reconstruction is timed that many times and the median counts: on a shared
    machine one pass of a second can land in a neighbour's busy spell.
    """
    detector = GeneratorDetector(inversion.mode, model_path, inversion, ScoreConfig(), batch_size=batch_size)
    passes = []
    for _ in range(repeats):
        start = time.perf_counter()
        reconstructions = detector.reconstruct(slices)
        passes.append(time.perf_counter() - start)
    seconds = float(np.median(passes))
    scores = detector.detection_from(slices, reconstructions).slice_scores
    row = {
        "mode": inversion.mode,
        "steps": inversion.resolved_steps,
        "lr": inversion.resolved_lr if inversion.resolved_steps else None,
        "slices": len(slices),
        "seconds": round(seconds, 3),
        "slices_per_s": round(len(slices) / seconds, 3),
        "auroc": round(float(roc_auc(slices.labels, scores)), 4),
    }
    if repeats > 1:
        row["slices_per_s_each_pass"] = [round(len(slices) / t, 1) for t in passes]
    return row


def _passes(row: dict[str, Any]) -> str:
    """How a median over timed passes was made, for the summary (empty for one pass)."""
    each = row.get("slices_per_s_each_pass")
    return f", median of {len(each)} passes ({', '.join(f'{v:.0f}' for v in each)})" if each else ""


def _synthetic_ct(path: Path, shape_xyz: tuple[int, int, int]) -> None:
    """A cheap body-like int16 CT (soft-tissue ellipse, spine, upper lungs) for the memory run."""
    nx, ny, nz = shape_xyz
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float32)
    body = ((x - nx / 2) / (0.42 * nx)) ** 2 + ((y - ny / 2) / (0.3 * ny)) ** 2 < 1
    spine = (x - nx / 2) ** 2 + (y - 0.7 * ny) ** 2 < (0.04 * nx) ** 2
    lungs = (((np.abs(x - nx / 2) - 0.2 * nx) / (0.12 * nx)) ** 2 + ((y - 0.45 * ny) / (0.18 * ny)) ** 2) < 1
    volume = np.full((nz, ny, nx), -1000, dtype=np.int16)
    for k in range(nz):
        section = np.where(body, 40, -1000) + np.where(spine, 400, 0)
        if k > 2 * nz // 3:
            section = np.where(lungs & body, -850, section)
        volume[k] = section + (rng.standard_normal((ny, nx)) * 12).astype(np.int16) * body
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.8, 0.8, 0.6))
    sitk.WriteImage(image, str(path))


def _score_once(command: list[str], out: Path, code: Path) -> dict[str, Any]:
    """One ``anomalyscout score`` process running the library in ``code``: wall time, CPU time of all its
    threads, peak RSS (process and children, sampled every 0.1 s) and the engine's stage timings from
    ``scores.json``."""
    code = code.resolve()
    env = dict(os.environ, PYTHONPATH=str(code))
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=code, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watched, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            members = [watched, *watched.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in members))
        except psutil.Error:
            pass
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    _, stderr = process.communicate()
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise RuntimeError(f"scoring the big volume failed ({process.returncode}): {stderr.decode()[-2000:]}")
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    summary = json.loads((out / "scores.json").read_text())
    return {
        "wall_s": seconds,
        "cpu_s": cpu,
        "peak_rss": peak,
        "timings": summary["timings"],
        "precision": summary.get("precision"),  # what the networks ran in (None: code before the option)
    }


def measure_end_to_end(
    model_path: Path,
    shape_xyz: tuple[int, int, int],
    threads: int,
    device: str = "cpu",
    repeats: int = 1,
    code: Path = REPO,
    position: str = "auto",
    precision: str = "auto",
    mode: str = "fast",
) -> dict[str, Any]:
    """Wall time, CPU time and peak RSS of ``anomalyscout score --mode MODE`` on a synthetic int16 CT of
    ``shape_xyz``, each run in a process of its own as a user would run it (interpreter start, imports, model
    loading, reading, scoring and writing all count). With ``repeats`` > 1 the median run by wall time
    counts, and every run's wall time is kept. ``code``: the checkout whose ``AnomalyScoutLib`` runs (another
    commit's ``git worktree``, to compare two versions on the same machine); ``position``: its
    ``--position``; ``precision``: its ``--precision``; ``mode``: its ``--mode`` (default fast)."""
    folder = Path(tempfile.mkdtemp(prefix="anomalyscout-speed-"))
    try:
        ct = folder / "big.nrrd"
        _synthetic_ct(ct, shape_xyz)
        command = [sys.executable, "-m", "AnomalyScoutLib", "score", str(ct), "--out", str(folder / "out"),
                   "--model", str(model_path), "--mode", mode, "--device", device,
                   "--threads", str(threads)]  # fmt: skip
        if position != "auto":  # the default, left out: a --code checkout older than the option still runs
            command += ["--position", position]
        if precision != "auto":  # likewise
            command += ["--precision", precision]
        runs = [_score_once(command, folder / "out", code) for _ in range(repeats)]
        median = sorted(runs, key=lambda run: run["wall_s"])[len(runs) // 2]
        timings = median["timings"]
        in_engine = sum(timings.get(key, 0.0) for key in ("read_s", "score_s", "write_s"))
        return {
            "shape_xyz": list(shape_xyz),
            "device": device,
            "threads": threads,
            "position": position,
            "mode": mode,
            "precision": median["precision"],
            "code": str(code),
            "repeats": repeats,
            "peak_rss_gb": round(max(run["peak_rss"] for run in runs) / 1e9, 3),
            "input_float32_gb": round(int(np.prod(shape_xyz)) * 4 / 1e9, 3),
            "wall_s": round(median["wall_s"], 2),
            "wall_s_each": [round(run["wall_s"], 2) for run in runs],
            "cpu_s": round(median["cpu_s"], 2),
            "cores_busy": round(median["cpu_s"] / median["wall_s"], 2),
            "engine_timings_s": {k: round(v, 2) for k, v in timings.items()},
            # interpreter start, imports, model loading, tables and the commit: what the engine does not time
            "outside_engine_s": round(median["wall_s"] - in_engine, 2),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def measure_gpu(threads: int) -> dict[str, Any]:
    """Issue 4's GPU target: a 300-slice 512x512 CT scored end to end in fast mode with a 512² model.

    The model is an *untrained* one of the ``512`` preset: speed depends on the architecture, not on the
    weights, and no trained 512² model exists yet. Without a CUDA device the reason is recorded instead.
    """
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device on this machine (torch.cuda.is_available() is False)"}
    folder = Path(tempfile.mkdtemp(prefix="anomalyscout-gpu-"))
    try:
        model_path = folder / "untrained-512.safetensors"
        AnomalyModel.create(preset("512")).save(model_path)
        row = measure_end_to_end(model_path, (512, 512, 300), threads, device="cuda")
        return {**row, "gpu": torch.cuda.get_device_name(0), "model": "untrained '512' preset"}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_destination(path, suffix=".json") as temporary:
        temporary.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def compare_with_projector(modes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Speed-up of each accurate row over the projector (timed over fewer steps: scaled linearly to 1000)."""
    projectors = [row for row in modes if row["mode"] == "projector"]
    if not projectors:
        return []
    projector = projectors[0]
    # A projector step costs the same at every step, so time over fewer steps scales linearly to 1000.
    projector["slices_per_s_at_1000_steps"] = round(projector["slices_per_s"] * projector["steps"] / 1000, 5)
    return [
        {
            "steps": row["steps"],
            "speedup": round(row["slices_per_s"] / projector["slices_per_s_at_1000_steps"], 1),
            "auroc": row["auroc"],
            "projector_auroc": projector["auroc"],
        }
        for row in modes
        if row["mode"] == "accurate"
    ]


def render_markdown(results: dict[str, Any]) -> str:
    """``docs/speed.md`` from the results (regenerated by every run)."""
    env = results["environment"]
    lines = [
        "# Speed and memory of the scoring engine",
        "",
        f"Measured by `{results['command']}` on {env['date']} ({env['cpu_count']} CPU cores visible, torch "
        f"{env['torch']} with {env['torch_threads']} threads, load average {env['load_average']} at start; "
        "the "
        "machine is shared, so absolute times are pessimistic; all modes ran in the same session). Model: "
        f"`{results['model']['id']}` ({results['model']['resolution']}² pixels). Raw numbers: "
        "`benchmarks/results/speed.json`.",
        "",
        "## Modes",
        "",
        f"{results['evaluation']['slices']} slices ({results['evaluation']['anomalous']} anomalous) of "
        f"{results['evaluation']['cases']} held-out phantom cases "
        f"({', '.join(results['evaluation']['kinds'])}); each anomalous slice is paired with the same "
        "slice of the same phantom made without the anomaly.",
        "",
        "| mode | steps | slices/s | slice AUROC |",
        "|---|---:|---:|---:|",
    ]
    for row in results["modes"]:
        lines.append(f"| {row['mode']} | {row['steps']} | {row['slices_per_s']:.2f} | {row['auroc']:.3f} |")
    throughput = results["fast_throughput"]
    lines += [
        "",
        f"`fast` throughput on all {throughput['slices']} slices of those cases: "
        f"**{throughput['slices_per_s']:.1f} slices/s** (target >= 100 on 2 cores at 128²)"
        + _passes(throughput)
        + ".",
        "",
    ]
    if not results["complete"]:
        lines += ["**Partial results**: the run was stopped before every measurement finished.", ""]
    projector = next((row for row in results["modes"] if row["mode"] == "projector"), None)
    if projector is not None and projector["steps"] != 1000:
        lines.append(
            f"The projector was timed over {projector['steps']} steps and its time scaled linearly to 1000 "
            f"steps ({projector['slices_per_s_at_1000_steps']:.4f} slices/s); its AUROC is after "
            f"{projector['steps']} steps (1000 steps on 2 shared CPU cores did not fit the session)."
        )
        lines.append("")
    for row in results["accurate_vs_projector"]:
        lines.append(
            f"- accurate K={row['steps']} is **{row['speedup']:.1f}x** faster than the projector "
            "(target >= 20x), "
            f"slice AUROC {row['auroc']:.3f} vs {row['projector_auroc']:.3f}."
        )
    end_to_end = results.get("end_to_end")
    if end_to_end:
        lines += ["", "## End to end", "", *_end_to_end_lines(end_to_end)]
    memory = results.get("memory")
    if memory:
        lines += [
            "",
            "## Memory",
            "",
            f"`anomalyscout score --mode fast` on a {'x'.join(map(str, memory['shape_xyz']))} volume "
            f"({memory['input_float32_gb']} GB as float32): peak RSS **{memory['peak_rss_gb']} GB** "
            f"(target < 3 GB), {memory['wall_s']} s wall. The input is held once in canonical order (int16 "
            "as stored); each batch is resampled to the model grid, scored and written to the output files "
            "as soon as it is done.",
        ]
    gpu = results.get("gpu")
    if gpu:
        lines += ["", "## GPU", ""]
        if "skipped" in gpu:
            lines.append(
                "Target: a 300-slice CT in < 10 s in fast mode with a 512² model. **Not measured**: "
                f"{gpu['skipped']}. The same command measures it on a machine with one."
            )
        else:
            lines.append(
                f"`anomalyscout score --mode fast --device cuda` on a {'x'.join(map(str, gpu['shape_xyz']))} "
                f"CT with an {gpu['model']} model on {gpu['gpu']}: **{gpu['wall_s']} s** end to end "
                f"(target < 10 s; engine timings {gpu['engine_timings_s']})."
            )
    sweep = results.get("sweep")
    if sweep:
        lines += [
            "",
            "## Choosing the accurate defaults",
            "",
            "| steps | lr | slice AUROC | slices/s |",
            "|---:|---:|---:|---:|",
        ]
        for row in sweep:
            lines.append(f"| {row['steps']} | {row['lr']} | {row['auroc']:.3f} | {row['slices_per_s']:.2f} |")
        lines += [
            "",
            f"Defaults in `AnomalyScoutLib/inversion.py`: K = {DEFAULT_ACCURATE_STEPS}, "
            f"lr = {DEFAULT_ACCURATE_LR}.",
        ]
    return "\n".join(lines) + "\n"


def _environment() -> dict[str, Any]:
    """Where and when a measurement ran; the load average says whether its times can be trusted."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(v, 1) for v in os.getloadavg()],
    }


def _shape(text: str) -> tuple[int, int, int]:
    x, y, z = (int(v) for v in text.split(","))
    return x, y, z


def _end_to_end_only(args: argparse.Namespace, command: str, model_row: dict[str, Any], out: Path) -> int:
    """``--only-end-to-end``: the end-to-end run alone, to its own results file (speed.json is left as is)."""
    results = {"command": command, "environment": _environment(), "model": model_row}
    load = results["environment"]["load_average"]
    if load[0] > 0.5:
        print(f"warning: load average {load}: the machine is not quiet, wall times will be pessimistic")
    results["end_to_end"] = measure_end_to_end(
        args.model,
        _shape(args.end_to_end_shape),
        args.threads,
        repeats=args.end_to_end_repeats,
        code=args.code,
        position=args.position,
        precision=args.precision,
        mode=args.mode,
    )
    results["environment"]["load_average_after"] = [round(v, 1) for v in os.getloadavg()]
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_json(out, results)
    print("\n".join(_end_to_end_lines(results["end_to_end"])))
    print(f"wrote {out}")
    return 0


def _end_to_end_lines(row: dict[str, Any]) -> list[str]:
    """The end-to-end run in words, for docs/speed.md and the terminal."""
    shape = "x".join(map(str, row["shape_xyz"]))
    return [
        f"`anomalyscout score --mode {row.get('mode', 'fast')} --threads {row['threads']}` on a {shape} "
        "int16 CT, end to end in a "
        f"fresh process: **{row['wall_s']} s** wall (target < 5 s on 2 cores; median of {row['repeats']}: "
        f"{row['wall_s_each']}), {row['cpu_s']} CPU s ({row['cores_busy']} cores busy on average), peak RSS "
        f"{row['peak_rss_gb']} GB. Engine stages (s): {row['engine_timings_s']}; outside them (interpreter "
        f"start, imports, model loading, tables, commit): {row['outside_engine_s']} s.",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH, help="model file (the shipped one)")
    parser.add_argument("--cases", type=int, default=4, help="held-out phantom cases (up to 6)")
    parser.add_argument("--per-case", type=int, default=12, help="slices per case (half anomalous)")
    parser.add_argument(
        "--projector-steps",
        type=int,
        default=1000,
        help="projector steps (1000 as Woodland; fewer: time scaled)",
    )
    parser.add_argument(
        "--end-to-end-shape", default="512,512,300", help="x,y,z of the end-to-end run ('' to skip)"
    )
    parser.add_argument(
        "--end-to-end-repeats", type=int, default=5, help="end-to-end runs (the median by wall time counts)"
    )
    parser.add_argument(
        "--only-end-to-end",
        action="store_true",
        help="measure only the end-to-end run; results to --out, default "
        f"{END_TO_END_RESULTS.relative_to(REPO)}",
    )
    parser.add_argument(
        "--code",
        type=Path,
        default=REPO,
        help="checkout whose AnomalyScoutLib the end-to-end run times (default: this one; e.g. a worktree "
        "of an older commit, to compare two versions on the same machine)",
    )
    parser.add_argument("--memory-shape", default="512,512,600", help="x,y,z of the memory run ('' to skip)")
    parser.add_argument("--sweep", action="store_true", help="also sweep accurate's steps and learning rate")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=16, help="slices per batch")
    parser.add_argument("--repeats", type=int, default=11, help="timed passes of fast throughput (median)")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"results JSON (default {RESULTS.relative_to(REPO)})"
    )
    parser.add_argument("--doc", type=Path, default=DOC, help="markdown summary")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="the end-to-end run's --precision (auto: bf16 where the CPU computes it natively)",
    )
    parser.add_argument("--mode", choices=MODES, default="fast", help="the end-to-end run's --mode")
    add_position_argument(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python -m benchmarks.speed " + " ".join(argv if argv is not None else sys.argv[1:])
    model = AnomalyModel.load(args.model)
    model_row = {"path": str(args.model), "id": model.model_id, "resolution": model.resolution}
    if args.only_end_to_end:
        return _end_to_end_only(args, command, model_row, args.out or END_TO_END_RESULTS)
    args.out = args.out or RESULTS
    placer = placer_for(model, args.position)
    slices = evaluation_slices(model, args.cases, args.per_case, placer=placer)
    print(f"evaluation set: {len(slices)} slices, {int(slices.labels.sum())} anomalous", flush=True)
    everything, excluded = in_range_only(
        concatenate(
            [
                phantom_case(s, k, model.resolution, model.window, CASE_SHAPE_XYZ, placer)
                for s, k in CASES[: args.cases]
            ]
        )
    )
    excluded.announce("evaluation cases'", "speed")
    results: dict[str, Any] = {
        "command": command,
        "environment": _environment(),
        "model": model_row,
        "evaluation": {
            "cases": args.cases,
            "kinds": sorted({kind for _, kind in CASES[: args.cases]}),
            "slices": len(slices),
            "anomalous": int(slices.labels.sum()),
            "position": {"placement": placer.method, "range_gate": excluded.as_dict()},
        },
    }
    configs = [
        InversionConfig(mode="fast"),
        InversionConfig(mode="accurate", steps=20),
        InversionConfig(mode="projector", steps=args.projector_steps),
        InversionConfig(mode="accurate", steps=50),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save(complete: bool = False) -> None:
        """Results so far, rewritten after each measurement: a stopped run still leaves its numbers."""
        results["complete"] = complete
        results["accurate_vs_projector"] = compare_with_projector(results["modes"])
        _write_json(args.out, results)
        args.doc.write_text(render_markdown(results), encoding="utf-8")

    for config in configs:  # warm-up: first calls pay for lazy initialisation, not the mode
        warm_up = dataclasses.replace(config, steps=2)
        GeneratorDetector("warm-up", args.model, warm_up, ScoreConfig()).reconstruct(
            slices.subset(np.arange(2))
        )
    results["fast_throughput"] = measure_mode(
        args.model, everything, InversionConfig(mode="fast"), args.batch_size, repeats=args.repeats
    )
    print(json.dumps(results["fast_throughput"]), flush=True)
    results["modes"] = []
    for config in configs:
        row = measure_mode(args.model, slices, config, args.batch_size)
        print(json.dumps(row), flush=True)
        results["modes"].append(row)
        save()
    if args.end_to_end_shape:
        results["end_to_end"] = measure_end_to_end(
            args.model,
            _shape(args.end_to_end_shape),
            args.threads,
            repeats=args.end_to_end_repeats,
            position=args.position,
            precision=args.precision,
        )
        print(json.dumps(results["end_to_end"]), flush=True)
        save()
    if args.memory_shape:
        shape = tuple(int(v) for v in args.memory_shape.split(","))
        results["memory"] = measure_end_to_end(
            args.model,
            shape,  # type: ignore[arg-type]
            args.threads,
            position=args.position,
            precision=args.precision,
        )
        print(json.dumps(results["memory"]), flush=True)
        save()
    results["gpu"] = measure_gpu(args.threads)
    print(json.dumps(results["gpu"]), flush=True)
    save()
    if args.sweep:
        results["sweep"] = []
        for steps in (10, 20, 50):
            for lr in (0.01, 0.02, 0.05):
                config = InversionConfig(mode="accurate", steps=steps, lr=lr)
                results["sweep"].append(measure_mode(args.model, slices, config, args.batch_size))
                print(json.dumps(results["sweep"][-1]), flush=True)
                save()
    save(complete=True)
    print(f"wrote {args.out} and {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
