"""Compare the synthetic phantom with real abdominal CT: slices at matching positions and HU histograms.

Usage::

    python -m benchmarks.phantom_vs_real [--real CT] [--seed 0] [--out docs/phantom_vs_real.png]

The real scan (default: the TotalSegmentator example in ``Testing/Data``, hips to liver dome, 3 mm) is put in
canonical axial order; a phantom is made on the same grid. The real scan does not cover the phantom's whole
pelvis-floor-to-lung-base range, so slices are matched by ``--covers``: the phantom positions that the real
scan's first and last slice correspond to. Inside each body mask we compare HU histograms and the fractions of
gas, fat, soft tissue, enhanced tissue and bone, and write them next to the picture as JSON
(``benchmarks/results/phantom_vs_real.json``), so that a change to the phantom shows up as a number.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from AnomalyScoutLib.atomic import write_bytes_atomic  # noqa: E402
from AnomalyScoutLib.io.geometry import axial_frame, to_canonical  # noqa: E402
from AnomalyScoutLib.io.volume import read_volume  # noqa: E402
from AnomalyScoutLib.phantom import make_phantom  # noqa: E402
from AnomalyScoutLib.preprocessing import body_mask  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REAL = ROOT / "Testing" / "Data" / "totalsegmentator_abdomen" / "example_ct.nii.gz"
REAL_POSITIONS = (0.05, 0.22, 0.4, 0.6, 0.75, 0.9, 0.99)
#: HU classes inside the body: (name, low, high).
CLASSES = (("gas/lung", -1100, -500), ("fat", -500, -30), ("soft", -30, 150), ("enhanced", 150, 300),
           ("bone", 300, 4000))  # fmt: skip


def tissue_fractions(hu: np.ndarray) -> dict[str, float]:
    """Fraction of the voxels in each HU class (:data:`CLASSES`)."""
    return {name: float(np.mean((hu >= low) & (hu < high))) for name, low, high in CLASSES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", type=Path, default=DEFAULT_REAL, help="real CT (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--covers",
        type=float,
        nargs=2,
        default=(0.06, 0.93),
        metavar=("P0", "P1"),
        help="phantom positions of the real scan's first and last slice (default 0.06 0.93)",
    )
    parser.add_argument(
        "--enhancement",
        type=float,
        default=0.1,
        help="phantom contrast enhancement (default 0.1: the liver of the example is ~46 HU)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "phantom_vs_real.png")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "phantom_vs_real.json")
    args = parser.parse_args(argv)

    real_volume = read_volume(args.real)
    frame = axial_frame(real_volume)
    real = to_canonical(real_volume.array_zyx, frame).astype(np.float32)
    n, rows, cols = real.shape
    ds, dr, dc = frame.spacing_kji
    case = make_phantom(
        args.seed, shape_xyz=(cols, rows, n), spacing_xyz=(dc, dr, ds), enhancement=args.enhancement
    )
    phantom = case.volume.array_zyx

    real_body, phantom_body = body_mask(real), body_mask(phantom)
    p0, p1 = args.covers
    real_hu = real[real_body]
    # Histograms over the phantom slices that the real scan covers, so both count the same anatomy.
    covered = np.zeros(n, dtype=bool)
    covered[int(p0 * n) : int(np.ceil(p1 * n))] = True
    phantom_covered = phantom[phantom_body & covered[:, None, None]]
    stats = {
        "real": {"file": str(args.real), "fractions": tissue_fractions(real_hu),
                 "percentiles_5_25_50_75_95": np.percentile(real_hu, [5, 25, 50, 75, 95]).tolist()},
        "phantom": {"seed": args.seed, "fractions": tissue_fractions(phantom_covered),
                    "percentiles_5_25_50_75_95": np.percentile(phantom_covered, [5, 25, 50, 75, 95]).tolist(),
                    "habitus": case.habitus},
    }  # fmt: skip

    columns = len(REAL_POSITIONS)
    figure = plt.figure(figsize=(2.3 * columns, 8.2))
    grid = figure.add_gridspec(3, columns, height_ratios=[1, 1, 1.1])
    for column, position in enumerate(REAL_POSITIONS):
        k_real = min(n - 1, int(position * n))
        p_phantom = p0 + (p1 - p0) * (k_real + 0.5) / n
        k_phantom = min(n - 1, int(p_phantom * n))
        for row, (name, array, k) in enumerate((("real", real, k_real), ("phantom", phantom, k_phantom))):
            axis = figure.add_subplot(grid[row, column])
            axis.imshow(array[k], cmap="gray", vmin=-250, vmax=350, interpolation="nearest")
            axis.set_title(f"{name} k={k} p={(k + 0.5) / n:.2f}", fontsize=8)
            axis.axis("off")
    histogram = figure.add_subplot(grid[2, : columns // 2 + 1])
    bins = np.arange(-1050, 1300, 10)
    for name, values in (("real", real_hu), ("phantom", phantom_covered)):
        histogram.hist(values, bins=bins, density=True, histtype="step", log=True, label=name)
    histogram.set_xlabel("HU inside the body mask")
    histogram.set_ylabel("density (log)")
    histogram.legend(fontsize=8)
    bars = figure.add_subplot(grid[2, columns // 2 + 1 :])
    names = [c[0] for c in CLASSES]
    x = np.arange(len(names))
    bars.bar(x - 0.2, [stats["real"]["fractions"][c] for c in names], 0.4, label="real")
    bars.bar(x + 0.2, [stats["phantom"]["fractions"][c] for c in names], 0.4, label="phantom")
    bars.set_xticks(x, names, fontsize=8)
    bars.set_ylabel("fraction of body voxels")
    bars.legend(fontsize=8)
    figure.suptitle(
        f"real CT ({args.real.name}) vs phantom (seed {args.seed}), window -250..350 HU", fontsize=10
    )
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    write_bytes_atomic(args.out, buffer.getvalue())
    write_bytes_atomic(args.json, (json.dumps(stats, indent=2) + "\n").encode())
    print(json.dumps({k: v["fractions"] for k, v in stats.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
