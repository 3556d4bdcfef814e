"""Probe: does a head taught fainter, only local, or also small synthetic changes see the phantoms' anomalies
better? ``train-head`` with the intensity changes of its synthesis drawn down to 12 HU (``--faint``), without
its two large families (``--local``), or with half the regions of its local families small (``--small``).

Usage (repository root; the two heads of ``docs/benchmarks.md`` section 11, 20 minutes each on one thread)::

    python -m benchmarks.head_contrast_probe --faint train-head --model models/default.safetensors \\
        --data runs/phantom-normal --out runs/head-subtle.safetensors --run runs/head-subtle-run \\
        --channels 16 32 64 --steps 1800 --max-minutes 45 --threads 1 --snapshots --no-progress
    python -m benchmarks.head_contrast_probe --as-shipped train-head ...   # the control, same options
    python -m benchmarks.head_comparison --heads default=models/default.safetensors \\
        control=runs/head-control.safetensors subtle=runs/head-subtle.safetensors

Why: the phantom's tumours change their masks by a median 20 HU in the model's window, metal's streaks and
deformations by 7 HU (``benchmarks.visibility``), while the synthesis's intensity shifts start at 20-30 HU
(:mod:`AnomalyScoutLib.anomaly_map.synthesis`). With ``--faint`` the texture shift (30-200 HU), the
noise texture (20-80 HU) and the diffuse density shift (20-120 HU) are drawn log-uniformly from 12 HU (just
above the 10 HU at which a pixel counts as changed) to the same top instead. One random number per draw
either way, so both heads see the same slices, regions and families in the same order.

With ``--local`` the head trains on the foreign-patch and texture families only. The diffuse-density family
covers 50-90 % of the body and the warp 10-40 %, and the default head's maps are warm over broad regions where
nothing is wrong (``benchmarks/results/visibility_misses.png``); this asks what those two families add. The
library is not changed: the ranges or the families are replaced for this process only.

With ``--small`` every family keeps its place, but half of the regions of the three local families (foreign
patch, Poisson patch, texture) cover 0.5-3 % of the body instead of 5-30 % (before the coarse noise halves
both): 20-120 model pixels, the size of the phantom's tumours and blobs (1-3 cm) and of the lesions a reader
looks for, which no synthetic region was as small as. The default head's map has a hole on a tumour the
residual shows plainly; this asks whether it was never taught anything that small.
"""

from __future__ import annotations

import math
import sys

import torch

from AnomalyScoutLib.anomaly_map import synthesis
from AnomalyScoutLib.anomaly_map.training import HeadTrainingOptions
from AnomalyScoutLib.cli import main as cli_main

#: The lowest intensity change drawn with ``--faint`` (HU).
FAINT_FLOOR_HU = 12.0
#: The intensity ranges (HU) of the synthesis that ``--faint`` widens downwards.
INTENSITY_RANGES = ((30.0, 200.0), (20.0, 80.0), (20.0, 120.0))

#: The families ``--local`` leaves out of training: the two whose regions cover much of the body.
LARGE_FAMILIES = ("diffuse_density", "warp")

#: Share of the local families' regions drawn small with ``--small``, and the body share they cover.
SMALL_SHARE = 0.5
SMALL_COVERAGE = (0.005, 0.03)

_as_shipped = synthesis._uniform
_families_as_shipped = HeadTrainingOptions.training_families
_region_as_shipped = synthesis._region_in_body


def _sometimes_small_region(body: torch.Tensor, generator: torch.Generator, **kwargs: object) -> torch.Tensor:
    """The local families call the region rule with its defaults; half of those calls get a small region."""
    if not kwargs and float(torch.rand((), generator=generator)) < SMALL_SHARE:
        return _region_as_shipped(body, generator, coverage=SMALL_COVERAGE)
    return _region_as_shipped(body, generator, **kwargs)  # type: ignore[arg-type]


def _local_families(options: HeadTrainingOptions) -> tuple[str, ...]:
    return tuple(f for f in _families_as_shipped.fget(options) if f not in LARGE_FAMILIES)


def _faint_uniform(generator: torch.Generator, low: float, high: float) -> float:
    if (low, high) not in INTENSITY_RANGES:
        return _as_shipped(generator, low, high)
    u = float(torch.rand((), generator=generator))
    return math.exp(math.log(FAINT_FLOOR_HU) + (math.log(high) - math.log(FAINT_FLOOR_HU)) * u)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("--faint", "--local", "--small", "--as-shipped"):
        print(
            "head_contrast_probe: first --faint, --local, --small or --as-shipped, then anomalyscout's",
            file=sys.stderr,
        )
        return 2
    synthesis._uniform = _faint_uniform if args[0] == "--faint" else _as_shipped
    if args[0] == "--local":
        HeadTrainingOptions.training_families = property(_local_families)  # type: ignore[method-assign]
    if args[0] == "--small":
        synthesis._region_in_body = _sometimes_small_region  # type: ignore[assignment]
    try:
        return cli_main(args[1:])
    finally:
        synthesis._uniform = _as_shipped
        HeadTrainingOptions.training_families = _families_as_shipped  # type: ignore[method-assign]
        synthesis._region_in_body = _region_as_shipped


if __name__ == "__main__":
    sys.exit(main())
