"""Position track: how well the body-part regressor and the per-scan fit place slices, and what the gate does.

Usage (repository root, niced)::

    nice -n 15 python -m benchmarks.position_track [--position models/position.safetensors] [--score]

Parts (each a section of ``benchmarks/results/position.json``):

- ``phantom_subranges``: held-out normal phantoms (seeds never used in training), cut at random sub-ranges
  (60 mm .. whole); truth = the phantom's slice position. Error of each slice's own estimate and of the
  fitted position; target: median fitted error < 0.02. The same on the slices mirrored left-right and
  front-back (``flipped``, an image whose header does not say so) and rotated in-plane by 10-20°
  (``oblique``).
- ``real_landmarks``: the real fixture (``Testing/Data/totalsegmentator_abdomen``) against landmarks from its
  TotalSegmentator labels (lowest liver slice, upper kidney poles) compared with the same landmarks measured
  on the held-out phantoms' label maps; also its liver-only crop and the single / three-slice fixtures.
  The fixture was in the regressor's self-supervised training data (order and spacing only, never a
  position label), so this is not a held-out test of the real domain.
- ``gate_inputs``: what the range gate says about a head slice, a neck slice and crops of the fixture.
- ``false_flags`` (``--score``): clean real scans scored with the shipped model by index and by anatomy:
  slices flagged before and after (the shipped model must hold the regressor, see ``docs/position.md``).
- ``speed``: regressor + fit on a 300-slice 512² CT on this machine (not a test; the machine is shared).
- ``plot``: ``docs/position_real_fixture.png``, the real fixture's coronal section beside each slice's own
  estimate, the whole scan's fitted line, crops placed on their own, and the landmarks.

Writes ``benchmarks/results/position.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from AnomalyScoutLib.io.geometry import axial_frame, to_canonical
from AnomalyScoutLib.io.volume import read_label_map, read_volume
from AnomalyScoutLib.phantom import make_phantom
from AnomalyScoutLib.position.fit import fit_positions
from AnomalyScoutLib.position.network import PositionRegressor
from AnomalyScoutLib.position.placement import estimate_slices, place_and_gate, place_slices
from AnomalyScoutLib.position.store import load_regressor
from benchmarks.results_io import RESULTS_DIR, write_json

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "Testing" / "Data"
FIXTURE = DATA / "totalsegmentator_abdomen"
DEFAULT_POSITION = REPO / "models" / "position.safetensors"
#: Seeds of the held-out phantoms (position-train uses 100000 + ...; the GAN's data sets use small seeds).
HELD_OUT_SEEDS = range(300_000, 300_006)
#: Tolerance of the landmark check: the phantom's anatomy is one body plan, real bodies vary around it.
LANDMARK_TOLERANCE = 0.05
LIVER, KIDNEY = 2, 4  # phantom label codes


def _fitted_error(regressor: PositionRegressor, hu: np.ndarray, spacing, truth: np.ndarray) -> dict[str, Any]:
    own = estimate_slices(regressor, hu, spacing[1:])
    fit = fit_positions(own, np.arange(len(own)) * spacing[0], regressor.config.slice_error)
    return {"own": np.abs(own - truth), "fitted": np.abs(fit.positions - truth), "in_scale": fit.beyond == 0}


def _summary(errors: list[dict[str, Any]]) -> dict[str, float]:
    own = np.concatenate([e["own"] for e in errors])
    fitted = np.concatenate([e["fitted"] for e in errors])
    scans = [float(np.median(e["fitted"])) for e in errors]
    return {
        "slices": len(own),
        "scans": len(errors),
        "own_median": float(np.median(own)),
        "own_p90": float(np.percentile(own, 90)),
        "fitted_median": float(np.median(fitted)),
        "fitted_p90": float(np.percentile(fitted, 90)),
        "worst_scan_median": float(max(scans)),
    }


def _rotated(hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    angle = float(rng.uniform(10.0, 20.0) * rng.choice([-1, 1]))
    return ndimage.rotate(hu, angle, axes=(1, 2), reshape=False, order=1, cval=-1000.0)


def phantom_subranges(regressor: PositionRegressor, cuts: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    plain, flipped, oblique, landmarks = [], [], [], {"liver_lowest": [], "kidney_top": []}
    for case_seed in HELD_OUT_SEEDS:
        n = int(rng.integers(60, 111))
        case = make_phantom(case_seed, shape_xyz=(128, 128, n))
        hu = case.volume.array_zyx
        sx, sy, sz = case.volume.spacing_xyz
        spacing = (sz, sy, sx)
        truth = (np.arange(n) + 0.5) / n
        for label, key in ((LIVER, "liver_lowest"), (KIDNEY, "kidney_top")):
            present = np.flatnonzero((case.labels == label).any(axis=(1, 2)))
            landmarks[key].append(float(truth[present.min() if key == "liver_lowest" else present.max()]))
        for _ in range(cuts):
            length = int(rng.integers(max(2, int(60.0 / sz)), n + 1))
            start = int(rng.integers(0, n - length + 1))
            part = slice(start, start + length)
            plain.append(_fitted_error(regressor, hu[part], spacing, truth[part]))
            flipped.append(_fitted_error(regressor, hu[part, ::-1, ::-1].copy(), spacing, truth[part]))
            oblique.append(_fitted_error(regressor, _rotated(hu[part], rng), spacing, truth[part]))
    return {
        "phantoms": len(HELD_OUT_SEEDS),
        "cuts_per_phantom": cuts,
        "plain": _summary(plain),
        "flipped": _summary(flipped),
        "oblique": _summary(oblique),
        "target_fitted_median": 0.02,
        "phantom_landmarks": {key: float(np.median(v)) for key, v in landmarks.items()},
    }


def _canonical(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    volume = read_volume(path)
    frame = axial_frame(volume)
    return to_canonical(volume.array_zyx, frame), frame.spacing_kji


def real_landmarks(regressor: PositionRegressor, phantom_levels: dict[str, float]) -> dict[str, Any]:
    hu, spacing = _canonical(FIXTURE / "example_ct.nii.gz")
    volume = read_volume(FIXTURE / "example_ct.nii.gz")
    frame = axial_frame(volume)
    liver = to_canonical(read_label_map(FIXTURE / "example_ct_liver.nii.gz", reference=volume), frame) > 0
    placement = place_slices(hu, spacing, regressor, "anatomy")
    liver_lowest = int(np.flatnonzero(liver.any(axis=(1, 2))).min())
    # example_seg covers canonical slices 82-111 of example_ct (README); 2/3 = right/left kidney.
    seg = read_label_map(FIXTURE / "example_seg.nii.gz")
    seg_volume = read_volume(FIXTURE / "example_ct_sm.nii.gz")
    seg = to_canonical(seg, axial_frame(seg_volume))
    kidney_top = 82 + int(max(np.flatnonzero((seg == k).any(axis=(1, 2))).max() for k in (2, 3)))
    checks = {}
    for key, k in (("liver_lowest", liver_lowest), ("kidney_top", kidney_top)):
        expected = phantom_levels[key]
        got = float(placement.positions[k])
        checks[key] = {
            "slice": k,
            "position": got,
            "phantom_level": expected,
            "error": got - expected,
            "within_tolerance": abs(got - expected) <= LANDMARK_TOLERANCE,
        }
    crop = place_slices(hu[82:112], spacing, regressor, "anatomy")
    # A crop must land where the same slices land in the whole scan: the real-CT analogue of the phantom's
    # sub-range check, needing no labels (the 20-slice upper-abdomen series is such a crop).
    consistency = {}
    for lo, hi in ((0, 20), (40, 70), (82, 112), (88, 108)):
        part = place_slices(hu[lo:hi], spacing, regressor, "anatomy").positions
        consistency[f"{lo}-{hi - 1}"] = float(np.median(np.abs(part - placement.positions[lo:hi])))
    small = {}
    for name, path in (
        ("dcmqi_3slice (upper abdomen, liver)", DATA / "dcmqi_3slice" / "ct-3slice"),
        ("explicit_VR-UN (abdomen, pancreas level)", DATA / "single_slices" / "explicit_VR-UN.dcm"),
    ):
        shu, sspacing = _canonical(path)
        p = place_slices(shu, sspacing, regressor, "anatomy")
        small[name] = {"positions": p.positions.tolist(), "how": p.how}
    return {
        "fixture": "Testing/Data/totalsegmentator_abdomen/example_ct.nii.gz (self-supervised training data)",
        "tolerance": LANDMARK_TOLERANCE,
        "whole_scan": {
            "first_last": [float(placement.positions[0]), float(placement.positions[-1])],
            "mm_per_unit": placement.mm_per_unit,
            "how": placement.how,
        },
        "landmarks": checks,
        "liver_crop_82_111": {
            "first_last": [float(crop.positions[0]), float(crop.positions[-1])],
            "same_slices_in_whole_scan": [float(placement.positions[82]), float(placement.positions[111])],
        },
        "crop_vs_whole_median_difference": consistency,
        "small_fixtures": small,
    }


def plot_real_fixture(regressor: PositionRegressor, landmarks: dict[str, Any], path: Path) -> dict[str, str]:
    """Where the real fixture's slices land: a picture of what ``real_landmarks`` measures."""
    from benchmarks.plots import plt, save_figure

    hu, spacing = _canonical(FIXTURE / "example_ct.nii.gz")
    z = np.arange(len(hu)) * spacing[0]
    own = estimate_slices(regressor, hu, spacing[1:])
    whole = place_slices(hu, spacing, regressor, "anatomy").positions
    figure, (image_axes, axes) = plt.subplots(
        1, 2, figsize=(10, 5), gridspec_kw={"width_ratios": [1, 2.2]}, sharey=False
    )
    coronal = hu[:, hu.shape[1] // 2, :]
    extent = (0, hu.shape[2] * spacing[2], z[0] - spacing[0] / 2, z[-1] + spacing[0] / 2)
    image_axes.imshow(coronal, cmap="gray", vmin=-160, vmax=240, origin="lower", extent=extent, aspect="auto")
    image_axes.set(title="real fixture, coronal", xlabel="mm", ylabel="z (mm)")
    axes.plot(own, z, ".", color="grey", markersize=4, label="each slice's own estimate")
    axes.plot(whole, z, "-", color="black", linewidth=2, label="whole scan, fitted")
    for (lo, hi), colour in zip(((0, 20), (40, 70), (88, 108)), ("tab:blue", "tab:green", "tab:orange")):
        crop = place_slices(hu[lo:hi], spacing, regressor, "anatomy").positions
        axes.plot(
            crop, z[lo:hi], "-", color=colour, linewidth=4, alpha=0.6, label=f"slices {lo}-{hi - 1} alone"
        )
    for name, check in landmarks.items():
        slice_z = z[check["slice"]]
        axes.plot([check["phantom_level"]], [slice_z], "r*", markersize=12)
        axes.annotate(
            f"{name.replace('_', ' ')}: phantom {check['phantom_level']:.2f}",
            (check["phantom_level"], slice_z),
            textcoords="offset points",
            xytext=(8, -4),
            fontsize=8,
            color="red",
        )
    axes.axvspan(-0.3, -0.05, color="0.9")
    axes.axvspan(1.05, 1.3, color="0.9")
    axes.set(
        xlim=(-0.3, 1.3),
        ylim=image_axes.get_ylim(),
        xlabel="position (0 pelvis floor, 1 lung bases; grey: out of range)",
        title="placement by the shipped regressor",
    )
    axes.legend(loc="lower right", fontsize=8)
    save_figure(figure, path)
    return {"file": str(path.relative_to(REPO))}


def gate_inputs(regressor: PositionRegressor) -> dict[str, Any]:
    """What the gate says about inputs the model was not made for (and one it was)."""
    hu, spacing = _canonical(FIXTURE / "example_ct.nii.gz")
    cases = {
        "whole example_ct": (hu, spacing),
        "upper abdomen, 20 slices (example_ct 88-107)": (hu[88:108], spacing),
        "pelvis, 20 slices (example_ct 0-19)": (hu[:20], spacing),
        "neck slice (CT_small.dcm)": _canonical(DATA / "single_slices" / "CT_small.dcm"),
        "head slice (693_UNCI.dcm)": _canonical(DATA / "single_slices" / "693_UNCI.dcm"),
    }
    out = {}
    for name, (chu, cspacing) in cases.items():
        placement, result = place_and_gate(chu, cspacing, regressor, "anatomy")
        out[name] = {
            "slices": len(placement.positions),
            "in_range": int(result.in_range.sum()),
            "positions_first_last": [float(placement.positions[0]), float(placement.positions[-1])],
            "summary": result.summary,
            "how": placement.how,
        }
    return out


def speed(regressor: PositionRegressor) -> dict[str, Any]:
    hu, spacing = _canonical(FIXTURE / "example_ct.nii.gz")
    big = np.repeat(np.repeat(hu, 4, axis=1), 4, axis=2)[:, :512, :512]
    big = np.concatenate([big, big, big])[:300].astype(np.float32)
    spacing = (1.0, 0.75, 0.75)
    times, cpu = [], []
    for _ in range(3):
        start, start_cpu = time.perf_counter(), time.process_time()
        place_and_gate(big, spacing, regressor, "anatomy")
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    # CPU time is what the work costs; wall time on a shared machine also counts the neighbours' turns.
    return {
        "volume": "300 x 512 x 512, placement + fit + range gate (body widths)",
        "threads": torch.get_num_threads(),
        "wall_seconds_min": min(times),
        "cpu_seconds_min": min(cpu),
    }


def false_flags(position_path: Path, model_path: Path) -> dict[str, Any]:
    """Slices flagged on clean real scans with the shipped model, by index and by anatomy."""
    import tempfile

    from AnomalyScoutLib.engine import ScoreOptions, VolumeScorer, score_file
    from AnomalyScoutLib.errors import VolumeError
    from AnomalyScoutLib.inversion import InversionConfig
    from AnomalyScoutLib.model_file import AnomalyModel
    from AnomalyScoutLib.position.store import attach_position
    from AnomalyScoutLib.scoring import ScoreConfig

    out: dict[str, Any] = {"model": str(model_path)}
    with tempfile.TemporaryDirectory() as work:
        model_file = attach_position(model_path, position_path, Path(work) / "model.safetensors")
        del model_file
        model = AnomalyModel.load(Path(work) / "model.safetensors")
        scorer = VolumeScorer(model, InversionConfig(mode="fast"), ScoreConfig(), torch.device("cpu"))
        for name, path in (
            ("example_ct", FIXTURE / "example_ct.nii.gz"),
            ("example_ct_sm (liver crop)", FIXTURE / "example_ct_sm.nii.gz"),
            ("dcmqi_3slice", DATA / "dcmqi_3slice" / "ct-3slice"),
        ):
            row = {}
            for method in ("index", "anatomy"):
                try:
                    run = score_file(path, Path(work) / f"{method}", scorer, ScoreOptions(position=method))
                except VolumeError as error:
                    row[method] = {"error": str(error)}
                    continue
                raw_above = run.case.scores > run.calibrated.threshold
                row[method] = {
                    "slices": len(run.case.scores),
                    "flagged": int(run.calibrated.flagged.sum()),
                    "in_range": int(run.gate.in_range.sum()),
                    "above_threshold_in_range": int(np.nansum(raw_above & run.gate.in_range)),
                    "calibrated": run.calibrated_by_model,
                }
            out[name] = row
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--position", type=Path, default=DEFAULT_POSITION, help="regressor file")
    parser.add_argument("--model", type=Path, default=REPO / "models" / "default.safetensors")
    parser.add_argument("--cuts", type=int, default=3, help="random sub-ranges per held-out phantom")
    parser.add_argument("--score", action="store_true", help="also score clean real scans (false flags)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "position.json")
    parser.add_argument(
        "--only", nargs="*", default=None, help="run these sections, keep the others' results"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    regressor, info = load_regressor(args.position)
    results: dict[str, Any] = {
        "track": "position",
        "command": "python -m benchmarks.position_track "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "regressor": {"file": str(args.position), **info},
    }
    sections = {
        "gate_inputs": lambda: gate_inputs(regressor),
        "phantom_subranges": lambda: phantom_subranges(regressor, args.cuts, seed=0),
        "real_landmarks": lambda: real_landmarks(
            regressor, results["phantom_subranges"]["phantom_landmarks"]
        ),
        "speed": lambda: speed(regressor),
        "plot": lambda: plot_real_fixture(
            regressor, results["real_landmarks"]["landmarks"], REPO / "docs" / "position_real_fixture.png"
        ),
    }
    if args.score:
        sections["false_flags"] = lambda: false_flags(args.position, args.model)
    if args.only is not None:
        kept = json.loads(args.out.read_text()) if args.out.is_file() else {}
        results = {**kept, **results}
        sections = {name: section for name, section in sections.items() if name in args.only}
    for name, section in sections.items():  # written after each section: a long run keeps what it measured
        results[name] = section()
        results["wall_s"] = time.perf_counter() - start
        write_json(results, args.out)
        print(f"{name} done after {results['wall_s']:.0f} s", file=sys.stderr)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
