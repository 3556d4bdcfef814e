"""Pool-based active-learning simulation: which strategy gets a liver segmenter furthest per label?

One command (from the repository root, niced: it is CPU work)::

    nice -n 15 python -m benchmarks.active_learning --model models/default.safetensors

Set-up, the same for every strategy and seed:

* **Data**: phantom cases (``AnomalyScoutLib.phantom``). In the *pool* anomalies are rare (a few cases of
  many); in the *test* set most cases carry one, as in practice, where the unusual cases are the ones a
  deployed model fails on. Slices are those with liver or within ``margin`` slices of it, in the pool only
  every ``stride``-th (neighbouring slices are near-copies; the stride halves the CPU cost), on a
  ``resolution``² grid (HU window to [-1, 1]); the truth is the liver label.
* **Signals** for the anomaly-based strategies come from the anomaly model (``--signals model``): the slice
  score of the scoring engine and the encoder's latent code (the mean of its ``ws``). ``--signals oracle``
  replaces them with the anomalous share of each slice plus noise and a pixel thumbnail: a ceiling for the
  selection logic, not a result.
* **Loop**: a seeded random start of ``initial`` slices (``initial_cases`` cases at the case level), then
  ``rounds`` rounds of ``batch`` slices (``case_batch`` cases), each followed by ``steps_per_round`` steps
  of fine-tuning of the small U-Net (:mod:`AnomalyScoutLib.segmentation`); uncertainty (MC-dropout entropy)
  and coreset features are recomputed each round with the current model. The *full-pool* reference trains on
  every pool slice for the same total number of steps.
* **Measures** per round: Dice of the thresholded prediction on the test set (all test slices pooled), and
  on its anomalous slices. Per strategy over seeds: mean learning curve with 95 % t-intervals, the area under
  the Dice-vs-labels curve (normalised by the label range, so it is a mean Dice), and the labels needed to
  reach 95 % of the full-pool Dice.

Results: ``benchmarks/results/active_learning.json``; plots and discussion: ``docs/active_learning.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from AnomalyScoutLib.active.strategies import STRATEGIES, PoolSignals, select
from AnomalyScoutLib.atomic import write_bytes_atomic
from AnomalyScoutLib.metrics import dice
from AnomalyScoutLib.phantom import PhantomCase, make_phantom
from AnomalyScoutLib.preprocessing import HUWindow, body_mask
from AnomalyScoutLib.segmentation import (
    UNet,
    predict_probabilities,
    predictive_entropy,
    segmentation_features,
    train_segmenter,
)
from benchmarks.data import LIVER_LABEL, volume_slices
from benchmarks.slices import CaseInfo, SliceSet, concatenate

__all__ = ["SimulationConfig", "main", "phantom_slices", "run_simulation", "summarise"]

RESULTS = Path("benchmarks/results/active_learning.json")
DOCS = Path("docs")
#: First phantom seeds of the pool and the test set: far from the shipped model's training seeds (1000-1029)
#: and the detection benchmark's test seeds (9000+), so that the anomaly model has never seen these cases.
POOL_FIRST_SEED, TEST_FIRST_SEED = 5000, 6000
#: Strategies compared with hybrid in the target (anomaly and diversity are its two halves, reported too).
TARGET_BASELINES = ("random", "uncertainty", "coreset")


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that defines a run; stored in the results so that a number can be traced to its set-up."""

    shape_xyz: tuple[int, int, int] = (96, 96, 40)
    resolution: int = 64
    margin: int = 2
    stride: int = 2
    pool_cases: int = 10
    pool_anomalous: int = 2
    test_cases: int = 6
    test_anomalous: int = 4
    anomaly: str = "tumour"
    seeds: int = 3
    initial: int = 8
    batch: int = 8
    rounds: int = 5
    initial_cases: int = 1
    case_batch: int = 1
    case_rounds: int = 4
    steps_initial: int = 40
    steps_per_round: int = 20
    batch_size: int = 8
    lr: float = 3e-3
    channels: tuple[int, ...] = (8, 16, 32)
    mc_samples: int = 4
    alpha: float = 1.0
    strategies: tuple[str, ...] = STRATEGIES
    levels: tuple[str, ...] = ("slice", "case")


@dataclass(frozen=True)
class Signals:
    """Per pool slice: the anomaly score and the latent code the anomaly-based strategies use."""

    scores: np.ndarray
    latents: np.ndarray


#: Per canonical slice of a phantom case: its anomaly score and latent code.
SignalSource = Callable[[PhantomCase], Signals]


def _case_slices(
    seed: int,
    anomalies: Sequence[str],
    config: SimulationConfig,
    name: str,
    stride: int,
    signals: SignalSource | None,
) -> tuple[SliceSet, Signals | None]:
    """The liver slices (with margin) of one phantom case on the model grid, and their signals."""
    case = make_phantom(seed, shape_xyz=config.shape_xyz, anomalies=anomalies)
    hu = case.volume.array_zyx  # the phantom is in canonical order with an identity direction
    liver = case.labels == LIVER_LABEL
    sx, sy, sz = case.volume.spacing_xyz
    info = CaseInfo(name, anomalies[0] if anomalies else "normal", seed)
    every_slice = volume_slices(
        hu, (sz, sy, sx), case.anomaly_mask > 0, liver, info, config.resolution, HUWindow()
    )
    liver_slices = np.flatnonzero(liver.any(axis=(1, 2)))
    first, last = liver_slices[0] - config.margin, liver_slices[-1] + config.margin
    keep = np.arange(max(0, first), min(len(hu), last + 1), stride)
    slices = every_slice.subset(keep)
    if signals is None:
        return slices, None
    of_case = signals(case)
    return slices, Signals(of_case.scores[keep], of_case.latents[keep])


def phantom_slices(
    first_seed: int,
    n_cases: int,
    n_anomalous: int,
    config: SimulationConfig,
    prefix: str,
    stride: int = 1,
    signals: SignalSource | None = None,
) -> tuple[SliceSet, Signals | None]:
    """``n_cases`` phantom cases from ``first_seed`` on, the first ``n_anomalous`` with ``config.anomaly``,
    every ``stride``-th slice, with the signals of their slices when ``signals`` is given."""
    anomaly = [config.anomaly]
    parts = [
        _case_slices(
            first_seed + i, anomaly if i < n_anomalous else [], config, f"{prefix}-{i}", stride, signals
        )
        for i in range(n_cases)
    ]
    if signals is None:
        return concatenate([p[0] for p in parts]), None
    return concatenate([p[0] for p in parts]), Signals(
        np.concatenate([p[1].scores for p in parts]), np.concatenate([p[1].latents for p in parts])
    )


# --- anomaly signals -------------------------------------------------------------------------------


def oracle_signals(case: PhantomCase, noise: float = 1e-6) -> Signals:
    """Anomalous share of each slice's body (plus a tie-breaking jitter), and an 8×8 thumbnail as the code.

    A ceiling for the selection logic (a perfect detector: every anomalous slice outranks every normal one),
    used to check the harness and to bound what anomaly-driven selection can gain, never as the result.
    """
    hu = case.volume.array_zyx
    share = (case.anomaly_mask > 0).sum(axis=(1, 2)) / np.maximum(body_mask(hu).sum(axis=(1, 2)), 1)
    scores = share + np.random.default_rng(case.seed).normal(0, noise, len(hu))
    thumbs = torch.nn.functional.adaptive_avg_pool2d(torch.as_tensor(HUWindow().normalize(hu))[:, None], 8)
    return Signals(scores, thumbs.flatten(1).numpy().astype(np.float64))


def model_signals(model: str | None) -> tuple[SignalSource, str]:
    """The anomaly model's slice scores (percentiles when calibrated) and encoder codes, on CPU."""
    from AnomalyScoutLib.active.engine import model_case_scorer

    scorer, model_id = model_case_scorer(model, "cpu")

    def signals(case: PhantomCase) -> Signals:
        scores = scorer.score_volume(case.volume)
        calibrated = np.isfinite(scores.slice_percentiles).all()
        return Signals(scores.slice_percentiles if calibrated else scores.slice_scores, scores.latents)

    return signals, model_id


# --- one learning curve ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Curve:
    """Labels (slices annotated) after each round, how many of them hold an anomaly, and the test Dice."""

    labels: list[int]
    anomalous_labels: list[int]
    dice: list[float]
    dice_anomalous: list[float]


def _evaluate(model: UNet, test: SliceSet) -> tuple[float, float]:
    """Dice over all test slices pooled, and over the test slices holding an anomaly."""
    predicted = predict_probabilities(model, test.images) > 0.5
    anomalous = test.labels
    return dice(predicted, test.organ), dice(predicted[anomalous], test.organ[anomalous])


def _units(pool: SliceSet, level: str) -> list[np.ndarray]:
    """The selectable units as lists of pool slice indices: single slices, or all slices of a case."""
    if level == "slice":
        return [np.array([i]) for i in range(len(pool))]
    return [np.flatnonzero(pool.case == c) for c in range(len(pool.cases))]


def _unit_mean(per_slice: np.ndarray, units: list[np.ndarray]) -> np.ndarray:
    return np.stack([per_slice[u].mean(axis=0) for u in units])


def _unit_anomaly(scores: np.ndarray, units: list[np.ndarray], top: int = 3) -> np.ndarray:
    """A case's anomaly: the mean of its ``top`` highest slice scores (as the engine's case score)."""
    return np.array([np.sort(scores[u])[-top:].mean() for u in units])


def _pool_signals(
    strategy: str,
    model: UNet,
    pool: SliceSet,
    units: list[np.ndarray],
    scores: np.ndarray,
    latents: np.ndarray,
    config: SimulationConfig,
    seed: int,
) -> PoolSignals:
    """The signals ``strategy`` needs, per unit; the segmenter's are recomputed with the current model."""
    uncertainty = features = None
    if strategy == "uncertainty":
        entropy = predictive_entropy(model, pool.images, samples=config.mc_samples, seed=seed)
        uncertainty = _unit_mean(entropy, units)
    if strategy == "coreset":
        features = _unit_mean(segmentation_features(model, pool.images), units)
    return PoolSignals(
        size=len(units),
        anomaly=_unit_anomaly(scores, units),
        latents=_unit_mean(latents, units),
        uncertainty=uncertainty,
        features=features,
    )


def learning_curve(
    strategy: str,
    level: str,
    pool: SliceSet,
    test: SliceSet,
    scores: np.ndarray,
    latents: np.ndarray,
    config: SimulationConfig,
    seed: int,
) -> Curve:
    """One active-learning run: seeded random start, then rounds of selection and fine-tuning."""
    units = _units(pool, level)
    rng = np.random.default_rng(seed)
    initial, batch, rounds = (
        (config.initial, config.batch, config.rounds)
        if level == "slice"
        else (config.initial_cases, config.case_batch, config.case_rounds)
    )
    chosen = [int(u) for u in rng.choice(len(units), initial, replace=False)]
    torch.manual_seed(seed)
    model = UNet(channels=config.channels, dropout=0.1)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    curve = Curve([], [], [], [])
    for round_index in range(rounds + 1):
        labelled = np.concatenate([units[u] for u in chosen])
        steps = config.steps_initial if round_index == 0 else config.steps_per_round
        train_segmenter(
            model,
            pool.images[labelled],
            pool.organ[labelled],
            steps=steps,
            batch_size=config.batch_size,
            seed=seed * 1000 + round_index,
            optimiser=optimiser,
        )
        overall, anomalous = _evaluate(model, test)
        curve.labels.append(len(labelled))
        curve.anomalous_labels.append(int(pool.labels[labelled].sum()))
        curve.dice.append(overall)
        curve.dice_anomalous.append(anomalous)
        if round_index < rounds:
            signals = _pool_signals(strategy, model, pool, units, scores, latents, config, seed)
            picked = select(
                strategy, signals, batch, labelled=chosen, seed=seed * 1000 + round_index, alpha=config.alpha
            )
            chosen.extend(int(u) for u in picked.indices)
    return curve


def full_pool_dice(
    pool: SliceSet, test: SliceSet, config: SimulationConfig, seed: int
) -> tuple[float, float]:
    """Dice (overall, anomalous) of the segmenter trained on the whole pool, as many steps as a slice run."""
    torch.manual_seed(seed)
    model = UNet(channels=config.channels, dropout=0.1)
    steps = config.steps_initial + config.rounds * config.steps_per_round
    train_segmenter(
        model,
        pool.images,
        pool.organ,
        steps=steps,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=seed * 1000,
    )
    return _evaluate(model, test)


# --- statistics ------------------------------------------------------------------------------------


def t_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean and two-sided t confidence interval over seeds (the seeds are the independent replicates)."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return {"mean": mean, "low": math.nan, "high": math.nan}
    half = stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return {"mean": mean, "low": mean - float(half), "high": mean + float(half)}


def normalised_auc(labels: Sequence[float], values: Sequence[float]) -> float:
    """Area under the Dice-vs-labels curve divided by the label range: the curve's mean Dice."""
    labels = np.asarray(labels, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    return float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(labels)) / (labels[-1] - labels[0]))


def labels_to_reach(labels: Sequence[int], values: Sequence[float], target: float) -> int | None:
    """The first label count whose Dice reaches ``target``; None when the budget never does."""
    return next((int(n) for n, v in zip(labels, values) if v >= target), None)


def summarise(curves: dict[str, list[Curve]], full_pool: list[tuple[float, float]]) -> dict[str, Any]:
    """Per strategy: mean curves with 95 % bands, AUCs with intervals, labels to 95 % of full-pool Dice."""
    full_overall = t_interval([f[0] for f in full_pool])
    full_anomalous = t_interval([f[1] for f in full_pool])
    out: dict[str, Any] = {}
    for strategy, runs in curves.items():
        entry: dict[str, Any] = {
            "labels": np.mean([c.labels for c in runs], axis=0).tolist(),
            "anomalous_labels": np.mean([c.anomalous_labels for c in runs], axis=0).tolist(),
        }
        for key, full in (("dice", full_overall), ("dice_anomalous", full_anomalous)):
            per_round = np.array([getattr(c, key) for c in runs])
            entry[key] = [t_interval(per_round[:, r]) for r in range(per_round.shape[1])]
            entry[f"auc_{key}"] = t_interval([normalised_auc(c.labels, getattr(c, key)) for c in runs])
            reached = [
                labels_to_reach(c.labels, getattr(c, key), 0.95 * f[0 if key == "dice" else 1])
                for c, f in zip(runs, full_pool)
            ]
            entry[f"labels_to_95pct_{key}"] = {
                "per_seed": reached,
                "mean_curve": labels_to_reach(
                    entry["labels"], [r["mean"] for r in entry[key]], 0.95 * full["mean"]
                ),
            }
        out[strategy] = entry
    return {"full_pool": {"dice": full_overall, "dice_anomalous": full_anomalous}, "strategies": out}


def target_verdict(level_summary: dict[str, Any]) -> dict[str, Any]:
    """The issue's target, checked as stated: hybrid's anomalous-slice AUC interval lies above each
    baseline's, and hybrid needs at most half of random's labels to reach 95 % of full-pool Dice (mean
    curves)."""
    strategies = level_summary["strategies"]
    if "hybrid" not in strategies:
        return {}
    hybrid = strategies["hybrid"]["auc_dice_anomalous"]
    above = {
        name: bool(hybrid["low"] > strategies[name]["auc_dice_anomalous"]["high"])
        for name in TARGET_BASELINES
        if name in strategies
    }
    verdict: dict[str, Any] = {"hybrid_auc_anomalous_interval_above": above}
    if "random" in strategies:
        hybrid_labels = strategies["hybrid"]["labels_to_95pct_dice"]["mean_curve"]
        random_labels = strategies["random"]["labels_to_95pct_dice"]["mean_curve"]
        verdict["labels_to_95pct"] = {"hybrid": hybrid_labels, "random": random_labels}
        verdict["hybrid_needs_at_most_half_of_random"] = (
            None if hybrid_labels is None or random_labels is None else hybrid_labels <= random_labels / 2
        )
    return verdict


# --- the run ---------------------------------------------------------------------------------------


def run_simulation(
    config: SimulationConfig, signals: SignalSource, *, workers: int = 1, progress: bool = True
) -> dict[str, Any]:
    """Build the data, run every strategy × level × seed, and return the summarised results.

    The runs are independent, so ``workers`` processes (one torch thread each) share them; each run's result
    depends only on its seed, not on which process ran it or when.
    """
    started = time.perf_counter()
    pool, pool_signals = phantom_slices(
        POOL_FIRST_SEED, config.pool_cases, config.pool_anomalous, config, "pool", config.stride, signals
    )
    test, _ = phantom_slices(TEST_FIRST_SEED, config.test_cases, config.test_anomalous, config, "test")
    scores, latents = pool_signals.scores, pool_signals.latents
    data_seconds = time.perf_counter() - started
    seeds = range(config.seeds)
    runs = [(level, name, seed) for level in config.levels for name in config.strategies for seed in seeds]
    with ProcessPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as executor:
        full_pool_futures = [executor.submit(full_pool_dice, pool, test, config, seed) for seed in seeds]
        futures = {
            executor.submit(learning_curve, strategy, level, pool, test, scores, latents, config, seed): (
                level,
                strategy,
                seed,
            )
            for level, strategy, seed in runs
        }
        done: dict[tuple[str, str, int], Curve] = {}
        for future in as_completed(futures):
            key = futures[future]
            done[key] = future.result()
            if progress:
                print(
                    f"[{time.perf_counter() - started:7.0f} s] {key[0]:5s} {key[1]:11s} seed {key[2]}: "
                    f"final Dice {done[key].dice[-1]:.3f} / anomalous {done[key].dice_anomalous[-1]:.3f}",
                    file=sys.stderr,
                    flush=True,
                )
        full_pool = [future.result() for future in full_pool_futures]
    results: dict[str, Any] = {}
    for level in config.levels:
        curves = {strategy: [done[level, strategy, seed] for seed in seeds] for strategy in config.strategies}
        summary = summarise(curves, full_pool)
        summary["target"] = target_verdict(summary)
        summary["curves"] = {name: [asdict(c) for c in runs] for name, runs in curves.items()}
        results[level] = summary
    anomalous_pool = pool.labels
    return {
        "config": asdict(config),
        "data": {
            "pool_slices": len(pool),
            "pool_anomalous_slices": int(anomalous_pool.sum()),
            "test_slices": len(test),
            "test_anomalous_slices": int(test.labels.sum()),
            "signal_auroc_pool_slices": _auroc_or_none(anomalous_pool, scores),
        },
        "levels": results,
        "seconds": {"data_and_signals": data_seconds, "total": time.perf_counter() - started},
    }


def _auroc_or_none(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """How well the anomaly signal separates the pool's anomalous slices (None when one class is missing)."""
    from AnomalyScoutLib.metrics import roc_auc

    return float(roc_auc(labels, scores)) if 0 < labels.sum() < len(labels) else None


def plot_curves(results: dict[str, Any], folder: Path, stem: str = "active_learning") -> list[Path]:
    """One figure per level, ``{stem}_{level}.png``: learning curves (all / anomalous slices), 95 % bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for level, summary in results["levels"].items():
        figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
        for axis, key, title in (
            (axes[0], "dice", "all test slices"),
            (axes[1], "dice_anomalous", "anomalous test slices"),
        ):
            for name, entry in summary["strategies"].items():
                mean = [r["mean"] for r in entry[key]]
                (line,) = axis.plot(
                    entry["labels"], mean, marker=".", label=name, linewidth=2.5 if name == "hybrid" else 1.2
                )
                low, high = [r["low"] for r in entry[key]], [r["high"] for r in entry[key]]
                axis.fill_between(entry["labels"], low, high, color=line.get_color(), alpha=0.15)
            axis.axhline(
                summary["full_pool"][key]["mean"], color="k", linestyle="--", linewidth=1, label="full pool"
            )
            axis.set_title(f"{level} level: Dice on {title}")
            axis.set_xlabel("labelled slices")
            axis.set_ylabel("Dice")
            axis.grid(alpha=0.3)
        axes[1].legend(fontsize=8)
        figure.tight_layout()
        path = folder / f"{stem}_{level}.png"
        buffer = _png_bytes(figure)
        plt.close(figure)
        write_bytes_atomic(path, buffer)
        written.append(path)
    return written


def _png_bytes(figure: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def markdown_table(results: dict[str, Any]) -> str:
    """The headline numbers per level and strategy, as the Markdown table of ``docs/active_learning.md``."""

    def interval(value: dict[str, float]) -> str:
        return f"{value['mean']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"

    lines = []
    for level, summary in results["levels"].items():
        full = summary["full_pool"]
        lines += [
            f"\n**{level} level** (full pool: Dice {interval(full['dice'])}, anomalous slices "
            f"{interval(full['dice_anomalous'])})\n",
            "| strategy | AUC Dice, all test slices | AUC Dice, anomalous test slices | labels to 95 % of "
            "full-pool Dice (mean curve; per seed) | anomalous slices labelled (last round) |",
            "|---|---|---|---|---|",
        ]
        for name, entry in summary["strategies"].items():
            reach = entry["labels_to_95pct_dice"]
            per_seed = ", ".join("–" if n is None else str(n) for n in reach["per_seed"])
            lines.append(
                f"| {name} | {interval(entry['auc_dice'])} | {interval(entry['auc_dice_anomalous'])} | "
                f"{reach['mean_curve'] or 'not reached'} ({per_seed}) | {entry['anomalous_labels'][-1]:.1f} |"
            )
        lines.append(f"\ntarget: `{json.dumps(_json_safe(summary['target']))}`")
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    """NaN and infinities become null: strict JSON readers (browsers, jq) reject them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--signals",
        choices=("model", "oracle"),
        default="model",
        help="anomaly scores and latents from the model file, or the oracle ceiling",
    )
    parser.add_argument("--model", default=None, help="model file (default: the shipped model)")
    parser.add_argument("--seeds", type=int, default=SimulationConfig.seeds)
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated")
    parser.add_argument("--levels", default="slice,case", help="comma-separated: slice, case")
    parser.add_argument("--anomaly", default=SimulationConfig.anomaly, help="phantom anomaly kind")
    parser.add_argument("--quick", action="store_true", help="a tiny run to check the harness")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--plots", type=Path, default=DOCS, help="folder for the learning-curve figures")
    parser.add_argument("--workers", type=int, default=1, help="processes for the runs (1 torch thread each)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = replace(
        SimulationConfig(),
        seeds=args.seeds,
        strategies=tuple(args.strategies.split(",")),
        levels=tuple(args.levels.split(",")),
        anomaly=args.anomaly,
    )
    if args.quick:
        config = replace(
            config,
            shape_xyz=(96, 96, 32),
            resolution=32,
            pool_cases=4,
            pool_anomalous=1,
            test_cases=2,
            test_anomalous=1,
            rounds=2,
            case_rounds=1,
            steps_initial=20,
            steps_per_round=10,
            seeds=min(config.seeds, 2),
        )
    if args.signals == "oracle":
        source: SignalSource = oracle_signals
        model_id = "oracle"
    else:
        source, model_id = model_signals(args.model)
    results = run_simulation(config, source, workers=args.workers)
    results["signals"] = {"source": args.signals, "model_id": model_id}
    results["command"] = " ".join(["python -m benchmarks.active_learning", *(argv or sys.argv[1:])])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(args.out, (json.dumps(_json_safe(results), indent=1) + "\n").encode())
    for path in plot_curves(results, args.plots, args.out.stem):
        print(f"wrote {path}")
    print(f"wrote {args.out}")
    print(markdown_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
