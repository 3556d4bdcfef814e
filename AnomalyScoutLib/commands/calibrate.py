"""``anomalyscout calibrate --model M --out M2 (--data NORMALS | --phantom N)``: normal score distributions.

Scores held-out **normal** CT volumes with every requested mode and stores, in the model file's metadata, the
per-position-bin distribution of their slice scores and the distribution of their case scores
(:mod:`AnomalyScoutLib.calibration`). Scoring then reports percentiles and flags at a chosen false-positive
rate. The normals must not have been used for training: with ``--phantom N`` they are phantom cases with seeds
from ``--phantom-seed`` (default 900000) upwards, far from the training seeds. Modes already calibrated in the
model and not recomputed are kept. The tensors are untouched, so the model id stays the same.

The same normals fit the model's intensity envelope (:mod:`AnomalyScoutLib.intensity_envelope`): the HU above
which a body voxel is not normal tissue (metal), never below ``--envelope-floor-hu`` (default 2000, the top of
real cortical bone; lower it only when the normals are the kind of scan the model will score).

Slices are placed as ``anomalyscout score`` places them (``--position``, default ``auto``: by anatomy when the
model holds a body-part regressor), through the same function, and the placement is stored with each mode's
bins. Slices that ``score`` would not judge (outside the model's range, or narrower than an abdomen) are left
out of the bins and counted; a volume with no slice in range is skipped.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from AnomalyScoutLib.calibration import (
    Calibration,
    calibration_key,
    check_fpr,
    fit_mode_calibration,
)
from AnomalyScoutLib.cli import add_command_parser
from AnomalyScoutLib.commands.score import add_device_arguments, add_position_argument, device_from_args
from AnomalyScoutLib.engine import CaseScores, VolumeScorer
from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.intensity_envelope import FLOOR_HU, METADATA_KEY, IntensityEnvelope, highest_body_hu
from AnomalyScoutLib.inversion import DENOISE_MODE, MODES, InversionConfig
from AnomalyScoutLib.io.geometry import axial_frame, to_canonical
from AnomalyScoutLib.io.volume import Volume, read_volume
from AnomalyScoutLib.model_file import AnomalyModel, stored_in_half
from AnomalyScoutLib.position.placement import place_and_gate, resolve_method
from AnomalyScoutLib.scoring import SCORE_METHODS, ScoreConfig, case_score

__all__ = ["DEFAULT_PHANTOM_SEED", "CalibrationRun", "calibrate_model", "phantom_normals", "register", "run"]

#: First seed of the held-out normal phantoms (training uses small seeds).
DEFAULT_PHANTOM_SEED = 900_000
DEFAULT_PHANTOM_SHAPE = (128, 128, 64)


def phantom_normals(count: int, first_seed: int, shape_xyz: Sequence[int]) -> Iterator[Volume]:
    """``count`` normal phantom volumes, made one at a time (only one is in memory)."""
    from AnomalyScoutLib.phantom import make_phantom

    for seed in range(first_seed, first_seed + count):
        yield make_phantom(seed, shape_xyz=shape_xyz).volume


@dataclass(frozen=True)
class CalibrationRun:
    """A calibration and how its normal slices were placed.

    Attributes:
        calibration: the model's calibration with the new modes added.
        placement: ``"anatomy"`` or ``"index"``, stored with every new mode.
        volumes: normal volumes in the bins.
        slices: normal slices in the bins.
        skipped_slices: slices left out: outside the model's range or narrower than an abdomen (the gate).
        skipped_volumes: volumes left out whole (no slice in range).
        envelope: the intensity envelope of the same normal slices.
    """

    calibration: Calibration
    placement: str
    volumes: int
    slices: int
    skipped_slices: int
    skipped_volumes: int
    envelope: IntensityEnvelope

    def summary(self) -> str:
        """One line about the placement and what it left out."""
        line = f"slices placed by {self.placement}: {self.slices} normal slices of {self.volumes} volume(s)"
        if self.skipped_slices:
            line += (
                f"; {self.skipped_slices} slice(s) outside the model's range (or narrower than an abdomen) "
                "left out of the bins"
            )
        if self.skipped_volumes:
            line += f", {self.skipped_volumes} volume(s) with no slice in range skipped"
        envelope = self.envelope
        line += (
            f"; intensity envelope {envelope.high_hu:.0f} HU (highest normal body voxel "
            f"{envelope.normal_max_hu:.0f} HU)"
        )
        return line


#: What ``calibrate`` calibrates without --modes (and ``denoise`` for a model with a denoiser).
DEFAULT_MODES = ("fast", "accurate")


def calibrate_model(
    model: AnomalyModel,
    normals: Sequence[Volume] | Iterator[Volume],
    scorers: Sequence[VolumeScorer],
    *,
    position: str = "auto",
    n_bins: int = 10,
    default_fpr: float = 0.01,
    envelope_floor_hu: float = FLOOR_HU,
    progress: Any = None,
) -> CalibrationRun:
    """Score every normal volume with every scorer and return the model's calibration with those modes added.

    Each volume is read (or generated) once, placed and gated once (:func:`place_and_gate`, as ``score``
    does) and its in-range slices scored by all scorers before the next, so a slow source of volumes is paid
    once and out-of-range slices cost no reconstruction. ``progress`` wraps the volume iterator (``tqdm``).

    The intensity envelope is fitted on the same in-range slices (never below ``envelope_floor_hu``), and a
    model with a position atlas or a denoiser gets the distributions of their scores too (the first
    scorer's that has them: these scores do not depend on the mode).

    Raises:
        ConfigError: unknown ``position``, ``"anatomy"`` without a regressor, or no volume with a slice in
            range.
    """
    regressor = model.position_regressor
    method = resolve_method(position, regressor)
    collected: list[dict[str, list[Any]]] = [{"scores": [], "positions": [], "cases": []} for _ in scorers]
    volumes = slices = skipped_slices = skipped_volumes = 0
    normal_max_hu: list[float] = []
    # the second opinions' scores (atlas, denoiser), the same in every mode: the first scorer's that has them
    opinion_stores: dict[str, dict[str, list[Any]]] = {}
    for volume in progress(normals) if progress else normals:
        frame = axial_frame(volume)
        canonical = to_canonical(volume.array_zyx, frame)
        placement, gate = place_and_gate(canonical, frame.spacing_kji, regressor, method)
        inside = gate.in_range
        skipped_slices += int((~inside).sum())
        if not inside.any():
            skipped_volumes += 1
            continue
        volumes, slices = volumes + 1, slices + int(inside.sum())
        positions = placement.positions[inside]
        canonical_inside = canonical if inside.all() else canonical[inside]
        normal_max_hu.append(highest_body_hu(canonical_inside))
        spacing = frame.spacing_kji
        results = [scorer.score(canonical_inside, spacing, positions=positions) for scorer in scorers]
        for scorer, store, result in zip(scorers, collected, results):
            store["scores"].append(result.scores)
            store["positions"].append(positions)
            store["cases"].append(case_score(result.scores, scorer.score_config))
        for key, opinion in _second_opinions(results).items():
            store = opinion_stores.setdefault(key, {"scores": [], "positions": [], "cases": []})
            store["scores"].append(opinion)
            store["positions"].append(positions)
            store["cases"].append(case_score(opinion, scorers[0].score_config))
    if not collected or not collected[0]["cases"]:
        why = f" ({skipped_volumes} had no slice in the model's range)" if skipped_volumes else ""
        raise ConfigError(f"calibration needs at least one normal volume{why}")
    stored = Calibration.from_json(model.calibration)
    calibration = Calibration(stored.modes, check_fpr(default_fpr))
    for scorer, store in zip(scorers, collected):
        fitted = fit_mode_calibration(
            store["scores"],
            store["positions"],
            store["cases"],
            scorer.calibration_settings(),
            n_bins=n_bins,
            placement=method,
        )
        calibration = calibration.with_mode(
            calibration_key(scorer.inversion.mode, scorer.score_config.key()), fitted
        )
    for key, store in opinion_stores.items():
        settings = scorers[0].opinion_settings(key)
        fitted = fit_mode_calibration(
            store["scores"], store["positions"], store["cases"], settings, n_bins=n_bins, placement=method
        )
        calibration = calibration.with_mode(key, fitted)
    envelope = IntensityEnvelope.fit(normal_max_hu, floor_hu=envelope_floor_hu)
    return CalibrationRun(calibration, method, volumes, slices, skipped_slices, skipped_volumes, envelope)


def _second_opinions(results: Sequence[CaseScores]) -> dict[str, np.ndarray]:
    """Each second opinion's scores of one volume, from the first scorer that heard it (``denoise`` mode has
    no denoiser opinion: there it is the score)."""
    found: dict[str, np.ndarray] = {}
    for result in results:
        for key, scores in result.second_opinions().items():
            found.setdefault(key, scores)
    return found


def _shape(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"shape must be three integers like 128,128,64, got {text!r}")
    return values  # type: ignore[return-value]


def _modes(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in modes if m not in MODES]
    if not modes or unknown:
        raise argparse.ArgumentTypeError(f"modes must be a comma list of {', '.join(MODES)}, got {text!r}")
    return modes


def run(args: argparse.Namespace) -> int:
    from AnomalyScoutLib.model_file import DEFAULT_MODEL_PATH
    from AnomalyScoutLib.train.data import list_volumes

    if (args.data is None) == (args.phantom is None):
        raise ConfigError("give exactly one source of normal volumes: --data PATH or --phantom N")
    if args.phantom is not None and args.phantom < 1:
        raise ConfigError(f"--phantom must be >= 1, got {args.phantom}")
    model_path = Path(args.model or DEFAULT_MODEL_PATH)
    device = device_from_args(args)
    model = AnomalyModel.load(model_path, device)
    score = ScoreConfig(method=args.score_method)
    modes = args.modes or DEFAULT_MODES + ((DENOISE_MODE,) if model.denoiser is not None else ())
    scorers = [
        VolumeScorer(
            model,
            InversionConfig(mode=mode, steps=args.steps),
            score,
            device,
            args.batch_size,
            args.precision,
        )
        for mode in modes
    ]
    if args.data is not None:
        normals: Any = (read_volume(path) for path in list_volumes(args.data))
        total = None
    else:
        normals = phantom_normals(args.phantom, args.phantom_seed, args.phantom_shape)
        total = args.phantom

    def progress(items: Any) -> Any:
        return tqdm(items, total=total, unit="volume", desc="calibrating", file=sys.stderr)

    done = calibrate_model(
        model,
        normals,
        scorers,
        position=args.position,
        n_bins=args.bins,
        default_fpr=args.default_fpr,
        envelope_floor_hu=args.envelope_floor_hu,
        progress=progress,
    )
    calibration = done.calibration
    model.calibration = calibration.to_json()
    model.metadata[METADATA_KEY] = done.envelope.to_json()
    model.save(args.out, half=stored_in_half(model_path))
    for key in sorted(calibration.modes):
        entry = calibration.modes[key]
        thresholds = [b.threshold(calibration.default_fpr) for b in entry.bins]
        print(
            f"{key}: {entry.n_cases} normal volumes; slice thresholds per position bin "
            f"at fpr {calibration.default_fpr:g}: {np.round(thresholds, 4).tolist()}"
        )
    print(done.summary())
    kept = sorted(k for k, m in calibration.modes.items() if m.placement != done.placement)
    if kept:
        print(
            f"note: the kept mode(s) {', '.join(kept)} were calibrated with the other placement; "
            "recalibrate them too (--modes)"
        )
    print(f"calibrated model written to {args.out}")
    return 0


def register(subparsers: Any) -> None:
    parser = add_command_parser(
        subparsers,
        "calibrate",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="model to calibrate (default: the shipped one)"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="calibrated model file to write (may be --model)"
    )
    parser.add_argument(
        "--data", default=None, help="normal CT volumes: a folder, a phantom folder or a list file"
    )
    parser.add_argument(
        "--phantom", type=int, default=None, help="use N held-out normal phantom volumes instead"
    )
    parser.add_argument("--phantom-seed", type=int, default=DEFAULT_PHANTOM_SEED, help="first phantom seed")
    parser.add_argument(
        "--phantom-shape", type=_shape, default=DEFAULT_PHANTOM_SHAPE, help="phantom size x,y,z"
    )
    parser.add_argument(
        "--modes",
        type=_modes,
        default=None,
        help="modes to calibrate (default fast,accurate, and denoise for a model with a denoiser)",
    )
    parser.add_argument("--steps", type=int, default=None, help="optimisation steps for accurate/projector")
    parser.add_argument(
        "--score-method", choices=SCORE_METHODS, default="topk", help="slice score (default topk)"
    )
    parser.add_argument("--bins", type=int, default=10, help="slice-position bins (default 10)")
    parser.add_argument("--default-fpr", type=float, default=0.01, help="false-positive rate used by default")
    parser.add_argument(
        "--envelope-floor-hu",
        type=float,
        default=FLOOR_HU,
        help=f"lowest HU the metal envelope may take (default {FLOOR_HU:g}: real cortical bone stays below)",
    )
    add_position_argument(parser)
    add_device_arguments(parser)
    parser.set_defaults(func=run)
