"""Picture grids of generated slices: the training-progress grid and the model card's real-vs-generated grid.

Both put one slice position per row, so a glance shows whether the conditioning works: the pelvis row must
look like pelvis and the liver-dome row like liver dome.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib.image
import numpy as np
import torch

from AnomalyScoutLib.atomic import write_bytes_atomic
from AnomalyScoutLib.nets.generator import Generator
from AnomalyScoutLib.train.data import SliceSet

__all__ = ["SAMPLE_POSITIONS", "write_comparison_grid", "write_sample_grid"]

#: Rows of every training sample grid: pelvis, lower abdomen, mid abdomen, upper abdomen, liver dome.
SAMPLE_POSITIONS = (0.1, 0.3, 0.5, 0.7, 0.9)


def _write_png(rows: Sequence[torch.Tensor], path: Path) -> None:
    """Rows of (res, W) images in [-1, 1] -> 8-bit greyscale PNG, written atomically."""
    grid = ((torch.cat(list(rows), dim=0).clamp(-1, 1).numpy() + 1.0) * 127.5).round().astype(np.uint8)
    buffer = io.BytesIO()
    matplotlib.image.imsave(buffer, grid, cmap="gray", vmin=0, vmax=255, format="png")
    write_bytes_atomic(path, buffer.getvalue())


@torch.no_grad()
def _samples(generator: Generator, position: float, columns: int, seed: int) -> torch.Tensor:
    """``columns`` samples at one position side by side, (res, columns * res), constant noise."""
    device = next(generator.parameters()).device
    z = torch.randn(columns, generator.z_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    images = generator(z, torch.full((columns,), position, device=device), noise_mode="const")
    return torch.cat(list(images[:, 0].float().cpu()), dim=1)


def write_sample_grid(
    generator: Generator,
    path: Path,
    *,
    columns: int = 6,
    seed: int = 0,
    positions: Sequence[float] = SAMPLE_POSITIONS,
) -> None:
    """One row per position, the same z in each column, so rows differ only by the position."""
    _write_png([_samples(generator, p, columns, seed) for p in positions], path)


def write_comparison_grid(
    generator: Generator,
    real: SliceSet,
    path: Path,
    *,
    positions: Sequence[float] = (0.1, 0.5, 0.9),
    columns: int = 4,
    seed: int = 0,
) -> None:
    """Per position: ``columns`` real slices nearest that position, a gap, then ``columns`` generated ones."""
    rows = []
    for position in positions:
        nearest = torch.argsort((real.positions - position).abs())[: columns * 7 : 7]  # spread over volumes
        real_row = torch.cat(list(real.images[nearest, 0].float()), dim=1)
        gap = torch.full((real_row.shape[0], real_row.shape[0] // 8), 1.0)
        rows.append(torch.cat([real_row, gap, _samples(generator, position, columns, seed)], dim=1))
    _write_png(rows, path)
