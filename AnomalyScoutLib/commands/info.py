"""``anomalyscout info CT``: what AnomalyScout sees in a CT before scoring it.

Reads the volume exactly as ``score`` does (same validation, same series choice in a DICOM folder) and prints
its size, spacing, orientation, HU range, modality, the series chosen, the canonical axial slicing and the
relative slice positions, so that a refused or surprising input can be understood without a model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from AnomalyScoutLib.cli import add_command_parser
from AnomalyScoutLib.io.geometry import axial_frame, to_canonical
from AnomalyScoutLib.io.volume import list_dicom_series, read_volume
from AnomalyScoutLib.preprocessing import POSITION_METHODS, body_mask, slice_positions

__all__ = ["describe", "register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command_parser(
        subparsers,
        "info",
        description=__doc__,
    )
    parser.add_argument("ct", type=Path, help="NIfTI/NRRD/MHA file, DICOM file, or folder of DICOM series")
    parser.add_argument("--series", metavar="UID", help="SeriesInstanceUID to read from a DICOM folder")
    parser.add_argument(
        "--position", choices=POSITION_METHODS, default="index", help="relative slice position definition"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(func=run)


def describe(path: Path, series_uid: str | None = None, position: str = "index") -> dict[str, Any]:
    """Read ``path`` and return the facts :func:`run` prints (JSON-ready).

    Raises:
        AnomalyScoutError: as :func:`~AnomalyScoutLib.io.volume.read_volume` for an unusable input.
    """
    volume = read_volume(path, series_uid)
    frame = axial_frame(volume)
    canonical = to_canonical(volume.array_zyx, frame)
    positions = slice_positions(canonical, frame.spacing_kji, position)
    low, p1, p99, high = np.percentile(volume.array_zyx, [0, 1, 99, 100])
    from_folder = Path(path).is_dir()
    # For a single DICOM file, look at its folder too: reading one file of a series is a common slip.
    series = list_dicom_series(path if from_folder else Path(path).parent) if volume.series_uid else []
    return {
        "input": str(path),
        "modality": volume.modality,
        "series_uid": volume.series_uid,
        "series_in_folder": [{"uid": uid, "files": count} for uid, count in series],
        "series_requested": series_uid is not None,
        "read_from_folder": from_folder,
        "size_xyz": list(reversed(volume.array_zyx.shape)),
        "spacing_xyz_mm": list(volume.spacing_xyz),
        "origin_xyz_mm": list(volume.origin_xyz),
        "orientation": frame.orientation,
        "obliquity_deg": frame.obliquity_deg,
        "canonical_shape": list(frame.canonical_shape),
        "canonical_spacing_mm": list(frame.spacing_kji),
        "hu_range": [float(low), float(high)],
        "hu_percentiles_1_99": [float(p1), float(p99)],
        "body_fraction": float(body_mask(canonical).mean()),
        "position_method": position,
        "positions_first_last": [float(positions[0]), float(positions[-1])],
    }


def _series_note(facts: dict[str, Any]) -> str:
    """Why this series: the only one, the largest, the requested one, or one file of a larger series."""
    files = {entry["uid"]: entry["files"] for entry in facts["series_in_folder"]}
    if not facts["read_from_folder"]:
        count = files.get(facts["series_uid"], 1)
        return f" (one file of a {count}-file series; give its folder to read it all)" if count > 1 else ""
    if len(files) > 1 and facts["series_requested"]:
        return f" (as requested; the folder holds {len(files)} series)"
    if len(files) > 1:
        return f" (the largest of {len(files)} series in the folder; pick another with --series)"
    return " (the only series in the folder)"


def _text(facts: dict[str, Any]) -> str:
    slices, rows, cols = facts["canonical_shape"]
    k_mm, row_mm, col_mm = facts["canonical_spacing_mm"]
    lines = [f"input:        {facts['input']}", f"modality:     {facts['modality'] or 'unknown (not DICOM)'}"]
    if facts["series_uid"]:
        lines.append(f"series:       {facts['series_uid']}{_series_note(facts)}")
    oblique = facts["obliquity_deg"]
    straight = "axis-aligned" if oblique < 0.01 else f"oblique by {oblique:.1f}°, sliced along nearest axes"
    lines += [
        "size:         {} x {} x {} voxels (x, y, z)".format(*facts["size_xyz"]),
        "spacing:      {:.3f} x {:.3f} x {:.3f} mm".format(*facts["spacing_xyz_mm"]),
        f"orientation:  {facts['orientation']} ({straight})",
        f"slicing:      {slices} axial slices of {rows} x {cols}, inferior to superior; "
        f"{k_mm:.2f} mm apart, pixels {row_mm:.3f} x {col_mm:.3f} mm",
        "HU range:     {:.0f} .. {:.0f} (1st-99th percentile {:.0f} .. {:.0f})".format(
            *facts["hu_range"], *facts["hu_percentiles_1_99"]
        ),
        f"body:         {100 * facts['body_fraction']:.0f}% of the voxels",
        "positions:    {:.3f} (slice 0, inferior) .. {:.3f} (slice {}, superior), method '{}'".format(
            *facts["positions_first_last"], slices - 1, facts["position_method"]
        ),
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    facts = describe(args.ct, args.series, args.position)
    print(json.dumps(facts) if args.json else _text(facts))
    return 0
