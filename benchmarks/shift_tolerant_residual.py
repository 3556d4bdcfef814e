"""Is the normal-body error misalignment? ``python -m benchmarks.shift_tolerant_residual [--model M]``.

A shift-tolerant residual compares each pixel with the nearest reconstruction value within ``r`` pixels, so
an organ edge drawn a pixel or two off costs nothing. If the residual's normal-body floor were only
misalignment while anomalies stayed unreconstructed, this would raise the anomaly-to-normal error ratio and
the slice AUROC; if the reconstruction draws something of the anomaly nearby, both errors fall together.
Runs the model's ``fast`` mode once on the validation phantoms of :mod:`benchmarks.model_selection` (seeds
7000+) and scores the same reconstructions for each tolerance, smoothing and top fraction. Results go to
``benchmarks/results/shift_tolerant_residual.json``; ``docs/training.md`` quotes them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from AnomalyScoutLib.inversion import InversionConfig
from AnomalyScoutLib.model_file import DEFAULT_MODEL_PATH, AnomalyModel
from AnomalyScoutLib.scoring import ScoreConfig, gaussian_smooth, top_fraction_mean
from benchmarks.detectors import Detection
from benchmarks.evaluate import detection_metrics
from benchmarks.model_selection import validation_slices
from benchmarks.ours import GeneratorDetector
from benchmarks.results_io import RESULTS_DIR, write_json

__all__ = ["main", "shift_tolerant_residual"]


def shift_tolerant_residual(images: torch.Tensor, reconstructions: torch.Tensor, radius: int) -> torch.Tensor:
    """``min |x - r(shifted)|`` over integer shifts within a disc of ``radius`` px, for ``(N, H, W)`` maps."""
    if radius == 0:
        return (images - reconstructions).abs()
    size = images.shape[-1]
    padded = F.pad(reconstructions[:, None], (radius,) * 4, mode="replicate")[:, 0]
    best = None
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx > radius * radius:
                continue
            shifted = padded[:, radius + dy : radius + dy + size, radius + dx : radius + dx + size]
            difference = (images - shifted).abs()
            best = difference if best is None else torch.minimum(best, difference)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--per-type", type=int, default=2, help="validation cases per anomaly type")
    parser.add_argument("--normal-cases", type=int, default=3, help="normal validation controls")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "shift_tolerant_residual.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = AnomalyModel.load(args.model, "cpu")
    slices = validation_slices(args.per_type, args.normal_cases, model)
    detector = GeneratorDetector("fast", args.model, InversionConfig(mode="fast"), ScoreConfig())
    images = torch.from_numpy(slices.images)
    reconstructions = torch.from_numpy(detector.reconstruct(slices).images)
    body, anomaly = torch.from_numpy(slices.body), torch.from_numpy(slices.anomaly)
    hu_per_unit = model.window.width / 2.0
    rows: list[dict[str, Any]] = []
    for radius in (0, 1, 2, 3):
        residual = shift_tolerant_residual(images, reconstructions, radius)
        normal_hu = float(residual[body & ~anomaly].mean()) * hu_per_unit
        anomaly_hu = float(residual[anomaly].mean()) * hu_per_unit
        for sigma in (0.0, 1.0, 2.0):
            maps = gaussian_smooth(residual, sigma)
            for fraction in (0.01, 0.05):
                scores = top_fraction_mean(maps, body, fraction).numpy().astype(np.float64)
                metrics = detection_metrics(slices, Detection(maps=maps.numpy(), slice_scores=scores))
                row = {
                    "radius_px": radius,
                    "smoothing_px": sigma,
                    "top_fraction": fraction,
                    "normal_body_hu": round(normal_hu, 1),
                    "anomaly_hu": round(anomaly_hu, 1),
                    "ratio": round(anomaly_hu / normal_hu, 3),
                    "slice_auroc": {kind: round(m["slice_auroc"], 3) for kind, m in metrics.items()},
                }
                rows.append(row)
                print(row, flush=True)
    header = {"model": str(args.model), "model_id": model.model_id, "slices": len(slices)}
    write_json({**header, "rows": rows}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
