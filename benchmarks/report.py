"""Fill the generated tables of ``docs/benchmarks.md`` from ``benchmarks/results/*.json``.

The page's prose (set-up, definitions, findings) is written by hand; the numbers are not. Each table lives
between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` and is replaced by this command, so a
rerun of the tracks followed by ``python -m benchmarks.report`` can never leave stale numbers behind prose
that quotes them by name. A results file that is missing leaves its table saying so.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.results_io import RESULTS_DIR

__all__ = ["TABLES", "fill", "main"]

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
_TYPES = ("tumour", "metal", "ascites", "blob", "deformation")


def _number(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _detection_table(methods: dict[str, Any], types: tuple[str, ...]) -> list[str]:
    """Methods × (slice AUROC per type and overall, slice AP, case AUROC, pixel AP, best Dice, speed)."""
    present = [t for t in types if any(t in m["metrics"] for m in methods.values())]
    head = [
        "method",
        *[f"{t} AUROC" for t in present],
        "overall AUROC",
        "slice AP",
        "case AUROC",
        "pixel AP",
        "best Dice",
        "slices/s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, entry in methods.items():
        m = entry["metrics"]
        overall = m["overall"]
        cells = [
            name,
            *[_number(m.get(t, {}).get("slice_auroc")) for t in present],
            f"**{_number(overall['slice_auroc'])}**",
            _number(overall["slice_ap"]),
            _number(overall["case_auroc"]),
            _number(overall["pixel_ap"]),
            _number(overall["best_dice"]),
            _number(entry["slices_per_s"], 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _phantom(results: dict[str, Any]) -> list[str]:
    scale = results["scale"]
    lines = [
        f"Run: `{results['command']}` ({results['finished']}, {results['wall_s']:.0f} s wall), model "
        f"`{results['model']['model_id']}`.",
        "",
        f"**Core subset** ({scale['core_slices']} slices, {scale['core_anomalous']} anomalous; every method "
        "on the same slices):",
        "",
    ]
    lines += _detection_table(results["core_subset"], _TYPES)
    lines += [
        "",
        f"**Full test set** ({scale['test_slices']} slices, every {scale['stride']}nd slice of "
        f"{len(results['split']['test_cases'])} held-out cases):",
        "",
    ]
    lines += _detection_table(results["full_test"], _TYPES)
    lines += [
        "",
        f"**Projector subset** ({scale['projector_slices']} slices, projector with "
        f"{scale['projector_steps']} steps):",
        "",
    ]
    lines += _detection_table(results["projector_subset"], _TYPES)
    for name, reason in results.get("unavailable", {}).items():
        lines += ["", f"- *{name}*: not run — {reason.splitlines()[0]}"]
    return lines


def _sweeps(results: dict[str, Any]) -> list[str]:
    lines = [
        "| refinement steps K | overall slice AUROC | worst type | mean over types | pixel AP | s/slice |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for steps, row in sorted(results["steps_sweep"].items(), key=lambda item: int(item[0])):
        lines.append(
            f"| {steps} | {_number(row['slice_auroc'])} | {_number(row['worst_type_auroc'])} | "
            f"{_number(row['mean_type_auroc'])} | {_number(row['pixel_ap'])} | "
            f"{_number(row['seconds_per_slice'], 2)} |"
        )
    rows = sorted(results["score_sweep"], key=lambda r: (-r["mean_type_auroc"], -r["slice_auroc"]))
    default = results["score_config"]
    lines += [
        "",
        "Score settings on the same reconstructions (best 8 by mean per-type slice AUROC, then the "
        "engine's default):",
        "",
        "| method | κ | top fraction | smoothing | overall AUROC | worst type | mean of types | pixel AP |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    is_default = [
        r
        for r in rows
        if all(r[k] == default[k] for k in ("method", "kappa", "top_fraction", "smoothing_px"))
    ]
    for row in rows[:8] + is_default:
        mark = " (default)" if row in is_default else ""
        lines.append(
            f"| {row['method']}{mark} | {row['kappa']} | {row['top_fraction']} | {row['smoothing_px']} | "
            f"{_number(row['slice_auroc'])} | {_number(row['worst_type_auroc'])} | "
            f"{_number(row['mean_type_auroc'])} | {_number(row['pixel_ap'])} |"
        )
    return lines


def _trained_on(model: dict[str, Any]) -> str:
    """What the model's GAN saw, from its file's training metadata (e.g. ``14 volumes, case_000...``)."""
    sources = model.get("training", {}).get("data", {}).get("sources", [])
    if not sources:
        return "training data not recorded"
    listed = ", ".join(sources[:2]) + (", ..." if len(sources) > 2 else "")
    return f"GAN data: {len(sources)} volume{'s' if len(sources) > 1 else ''}, {listed}"


def _real(results: dict[str, Any]) -> list[str]:
    data = results["data"]
    lines = [
        f"Run: `{results['command']}` ({results['finished']}), model `{results['model']['model_id']}` "
        f"({_trained_on(results['model'])}). {data['train_slices']} training slices, {data['test_slices']} "
        f"test slices ({data['test_anomalous_slices']} anomalous).",
        "",
        f"**Core subset** ({data['core_slices']} slices):",
        "",
    ]
    lines += _detection_table(results["core_subset"], _TYPES)
    lines += ["", "**All test slices**:", ""]
    lines += _detection_table(results["full_test"], _TYPES)
    lines += [
        "",
        "Score settings of the phantom sweep, checked on these reconstructions (accurate mode, core subset):",
        "",
        "| method | κ | top fraction | overall AUROC | worst type | mean of types |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in results.get("score_check", []):
        lines.append(
            f"| {row['method']} | {row['kappa']} | {row['top_fraction']} | {_number(row['slice_auroc'])} | "
            f"{_number(row['worst_type_auroc'])} | {_number(row['mean_type_auroc'])} |"
        )
    for name, reason in results.get("unavailable", {}).items():
        lines += ["", f"- *{name}*: not run — {reason.splitlines()[0]}"]
    return lines


def _segfail(results: dict[str, Any]) -> list[str]:
    settings = results["settings"]
    lines = [
        f"Run: `{results['command']}` ({results['finished']}). {results['slices_scored']} liver slices "
        f"(≥ {settings['min_liver_px']} liver pixels); failure = Dice < {settings['failure_dice']}.",
        "",
    ]
    if "normal_dice" in results:
        segmenter = results["segmenter"]
        native = results.get("normal_dice_at_segmenter_grid")
        at_its_grid = (
            "" if native is None else f" (**{_number(native)}** at its own {segmenter['resolution']}² grid)"
        )
        by_area = results.get("failure_auroc_error_area")
        area_text = (
            ""
            if by_area is None
            else f"; by error area (> {results['failure_error_px']:.0f} px wrong): **{_number(by_area)}**"
        )
        lines += [
            f"Segmenter: {segmenter['network']}, {segmenter['step']} steps (best validation Dice "
            f"{_number(segmenter['best_dice'])}); **normal Dice {_number(results['normal_dice'])}** on the "
            f"held-out normal cases at the model grid{at_its_grid}. Default score "
            f"({results['default_score']}): **failure AUROC {_number(results['failure_auroc'])}**"
            f"{area_text}.",
            "",
        ]
    for group, row in results["dice"].items():
        area = row.get("failures_by_error_area")
        lines.append(
            f"- {group}: mean Dice {_number(row['mean'])}, {row['failures']} failures of "
            f"{row['slices']} slices" + ("" if area is None else f" ({area} by error area)")
        )
    lines += [
        "",
        "| score | slices | Spearman(score, 1 − Dice) | Spearman(score, error area) | failure AUROC "
        "| failure AP |",
        "|---|---|---:|---:|---:|---:|",
    ]
    tables = [("", results["scores"])]
    if "real_fixture" in results:
        tables.append(("real fixture: ", results["real_fixture"]["scores"]))
    for prefix, scores in tables:
        for name, groups in scores.items():
            for group, row in groups.items():
                lines.append(
                    f"| {name} | {prefix}{group} | {_number(row['spearman_vs_1_minus_dice'])} | "
                    f"{_number(row.get('spearman_vs_error_area'))} | {_number(row['failure_auroc'])} | "
                    f"{_number(row['failure_ap'])} |"
                )
    return lines


def _speed(results: dict[str, Any]) -> list[str]:
    lines = ["| method | mode / steps | slices/s | measured by |", "|---|---|---:|---|"]
    speed = _load("speed")
    if speed is not None:
        for row in speed.get("modes", []):
            lines.append(
                f"| ours ({row['mode']}) | {row['steps']} steps | {_number(row['slices_per_s'], 2)} | "
                "`benchmarks.speed` |"
            )
    for name, entry in results["full_test"].items():
        lines.append(f"| {name} | full test set | {_number(entry['slices_per_s'], 2)} | phantom track |")
    for name, entry in results["core_subset"].items():
        if name.startswith("ours"):
            lines.append(f"| {name} | core subset | {_number(entry['slices_per_s'], 2)} | phantom track |")
    for name, entry in results["projector_subset"].items():
        if "projector" in name:
            lines.append(
                f"| {name} | projector subset | {_number(entry['slices_per_s'], 3)} | phantom track |"
            )
    if speed is None:
        lines += ["", "(`benchmarks/results/speed.json` not found: run `python -m benchmarks.speed`.)"]
    return lines


def _model_selection(results: dict[str, Any]) -> list[str]:
    validation = results["validation"]
    lines = [
        f"Run: `{results['command']}` ({results['finished']}). Validation: {validation['slices']} slices "
        f"({validation['anomalous_slices']} anomalous) of phantoms with seeds {validation['first_seed']}+; "
        f"accurate mode on a balanced subset of {validation['accurate_subset']}. Criterion: "
        f"{results['criterion']}.",
        "",
        "| model | GAN kimg | encoder kimg | fast: mean of types | fast: worst type "
        "| accurate: mean of types | accurate: worst type | accurate: overall | chosen |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in results["candidates"]:
        fast, accurate = c["fast"], c["accurate"]
        lines.append(
            f"| `{Path(c['path']).name}` ({c['model_id']}) | {_number(c['gan_kimg'], 1)} | "
            f"{_number(c['encoder_kimg'], 1)} | {_number(fast['mean_type_auroc'])} | "
            f"{_number(fast['worst_type_auroc'])} | {_number(accurate['mean_type_auroc'])} | "
            f"{_number(accurate['worst_type_auroc'])} | {_number(accurate['slice_auroc'])} | "
            f"{'**yes**' if c['path'] == results['chosen'] else ''} |"
        )
    return lines


#: Table name -> (results file, renderer).
TABLES: dict[str, tuple[str, Callable[[dict[str, Any]], list[str]]]] = {
    "phantom": ("phantom", _phantom),
    "phantom-sweeps": ("phantom", _sweeps),
    "real": ("real", _real),
    "segfail": ("segfail", _segfail),
    "speed": ("phantom", _speed),
    "model-selection": ("model_selection", _model_selection),
    "real-finetuned": ("real_finetuned", _real),
}


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def fill(text: str) -> str:
    """``text`` with every generated block replaced by the table rendered from its results file."""
    for name, (source, render) in TABLES.items():
        results = _load(source)
        body = render(results) if results is not None else [f"(`benchmarks/results/{source}.json` not found)"]
        pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- /generated:{name} -->)", re.S)
        text = pattern.sub(lambda m, b=body: m.group(1) + "\n".join(b) + "\n" + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args(argv)
    text = fill(args.doc.read_text())
    fd, tmp = tempfile.mkstemp(suffix=".md", dir=args.doc.parent)
    with os.fdopen(fd, "w") as stream:
        stream.write(text)
    os.replace(tmp, args.doc)
    print(f"updated {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
