"""``anomalyscout phantom``: write synthetic CT cases, their label maps and anomaly masks, and a manifest.

Output folder layout (``N`` cases, ``EXT`` = ``nii.gz`` or ``nrrd``)::

    case_000_ct.EXT        CT in HU (float32 whole numbers)
    case_000_labels.EXT    uint8 label map (codes in manifest["label_names"])
    case_000_anomaly.EXT   uint8 anomaly mask (0 = normal voxel, else manifest["anomaly_codes"])
    manifest.json          per case: seed, files, anomalies with their slices, parameters
    preview.png            with --preview: a montage of every case

Case ``i`` uses seed ``--seed + i``. Every file is written atomically and the manifest last, so a folder with
a manifest is complete.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from AnomalyScoutLib.atomic import write_bytes_atomic
from AnomalyScoutLib.cli import add_command_parser
from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.io.volume import Volume, write_volume
from AnomalyScoutLib.phantom import ANOMALY_CODES, LABEL_NAMES, PhantomCase, make_phantom
from AnomalyScoutLib.phantom.case import DEFAULT_SHAPE_XYZ

__all__ = ["register", "run", "write_case"]

FORMATS = ("nii.gz", "nrrd")


def _triple(kind: type, name: str):
    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(v) for v in text.replace("x", ",").split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be three numbers like 128,128,48, got {text!r}"
            ) from None
        if len(values) != 3:
            raise argparse.ArgumentTypeError(f"{name} must be three numbers like 128,128,48, got {text!r}")
        return values

    return parse


def _anomaly_list(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if names in ((), ("none",)):
        return ()
    unknown = [n for n in names if n not in ANOMALY_CODES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown anomaly kind(s) {unknown}; choose from none or {sorted(ANOMALY_CODES)}"
        )
    return names


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command_parser(
        subparsers,
        "phantom",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("--n", type=int, default=1, help="number of cases (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first case (default 0)")
    parser.add_argument(
        "--anomalies",
        type=_anomaly_list,
        default=(),
        help="comma-separated kinds inserted into every case, or 'none' (default); "
        f"kinds: {', '.join(ANOMALY_CODES) or 'none yet'}",
    )
    parser.add_argument(
        "--shape",
        type=_triple(int, "--shape"),
        default=DEFAULT_SHAPE_XYZ,
        metavar="X,Y,Z",
        help="volume size in voxels (default %(default)s)",
    )
    parser.add_argument(
        "--spacing",
        type=_triple(float, "--spacing"),
        default=None,
        metavar="SX,SY,SZ",
        help="voxel size in mm (default: 400 mm field of view, 330 mm long)",
    )
    parser.add_argument(
        "--noise",
        type=float,
        default=None,
        metavar="HU",
        help="CT noise standard deviation (default: drawn per case, 8-21 HU)",
    )
    parser.add_argument(
        "--enhancement",
        type=float,
        default=None,
        metavar="E",
        help="contrast enhancement, 0 = none, 1 = portal-venous (default: drawn per case)",
    )
    parser.add_argument("--format", choices=FORMATS, default="nii.gz", help="file format (default nii.gz)")
    parser.add_argument(
        "--preview", action="store_true", help="also write preview.png, a montage of the cases"
    )
    parser.set_defaults(func=run)


def write_case(case: PhantomCase, folder: Path, stem: str, extension: str) -> dict[str, str]:
    """Write the CT, label map and anomaly mask of ``case``; returns the file names by role."""
    files = {
        "ct": f"{stem}_ct.{extension}",
        "labels": f"{stem}_labels.{extension}",
        "anomaly_mask": f"{stem}_anomaly.{extension}",
    }
    write_volume(case.volume, folder / files["ct"])
    for role, array in (("labels", case.labels), ("anomaly_mask", case.anomaly_mask)):
        write_volume(
            Volume(array, case.volume.spacing_xyz, case.volume.origin_xyz, case.volume.direction),
            folder / files[role],
        )
    return files


def _case_entry(case: PhantomCase, files: dict[str, str]) -> dict[str, Any]:
    return {
        "seed": case.seed,
        "files": files,
        "shape_xyz": list(reversed(case.volume.array_zyx.shape)),
        "spacing_xyz": list(case.volume.spacing_xyz),
        "anomalies": [
            {
                "kind": a.kind,
                "code": a.code,
                "slices": list(a.slices),
                "voxels": a.voxels,
                "parameters": a.parameters,
            }
            for a in case.anomalies
        ],
        "anomalous_slices": [int(k) for k in case.slice_labels.nonzero()[0]],
        "parameters": case.habitus,
    }


def run(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise ConfigError(f"--n must be at least 1, got {args.n}")
    if args.seed < 0:
        raise ConfigError(f"--seed must be non-negative, got {args.seed}")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    entries, cases = [], []
    for i in tqdm(range(args.n), desc="phantom", unit="case"):
        case = make_phantom(
            args.seed + i,
            shape_xyz=args.shape,
            spacing_xyz=args.spacing,
            anomalies=args.anomalies,
            noise_hu=args.noise,
        )
        entries.append(_case_entry(case, write_case(case, out, f"case_{i:03d}", args.format)))
        if args.preview:
            cases.append(case)
    if args.preview:
        from AnomalyScoutLib.phantom.preview import save_preview

        save_preview(cases, out / "preview.png")
    manifest = {
        "generator": "AnomalyScoutLib.phantom",
        "arguments": {
            "n": args.n,
            "seed": args.seed,
            "anomalies": list(args.anomalies),
            "shape_xyz": list(args.shape),
            "spacing_xyz": None if args.spacing is None else list(args.spacing),
            "noise_hu": args.noise,
            "enhancement": args.enhancement,
        },
        "format": args.format,
        "label_names": {str(k): v for k, v in LABEL_NAMES.items()},
        "anomaly_codes": ANOMALY_CODES,
        "cases": entries,
    }
    write_bytes_atomic(out / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
    print(f"wrote {args.n} case(s) to {out}")
    return 0
