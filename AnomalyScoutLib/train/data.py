"""Training slices: every usable axial slice of a set of CT volumes, preprocessed once into memory.

The volumes a GAN is trained on here are few and small (tens of volumes, ~100 slices each at 128²), so the
whole set fits in memory as a float16 tensor; reading and resampling it once makes every training step a plain
index into that tensor. The preprocessing is exactly the scoring engine's (window, model grid, positions), so
the model sees at training time what it will see at scoring time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from AnomalyScoutLib.errors import ConfigError, VolumeError
from AnomalyScoutLib.io.geometry import axial_frame, to_canonical
from AnomalyScoutLib.io.volume import Volume, read_volume
from AnomalyScoutLib.preprocessing import HUWindow, body_mask, model_grid, slice_positions

__all__ = [
    "VOLUME_SUFFIXES",
    "PreprocessedVolume",
    "SliceSet",
    "list_volumes",
    "load_slices",
    "preprocess_volume",
    "preprocess_volumes",
]

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
#: A slice whose body covers less of the image than this is air/table only and teaches the GAN nothing.
DEFAULT_MIN_BODY_FRACTION = 0.05


def _is_volume_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(VOLUME_SUFFIXES)


def _is_dicom_folder(path: Path) -> bool:
    return path.is_dir() and any(child.suffix.lower() == ".dcm" for child in path.iterdir())


def list_volumes(data: str | Path) -> list[Path]:
    """The CT volumes named by ``data``, in a stable order.

    ``data`` is one of: a text file with one path per line (``#`` comments, relative to the file's folder); a
    folder written by ``anomalyscout phantom`` (its ``manifest.json`` names the CT files, so label maps and
    anomaly masks are not mistaken for CT); or any other folder, whose image files and DICOM sub-folders are
    all taken.

    Raises:
        ConfigError: ``data`` does not exist or names no volume.
    """
    data = Path(data)
    if data.is_file():
        lines = [line.split("#", 1)[0].strip() for line in data.read_text().splitlines()]
        paths = [(data.parent / line) for line in lines if line]
    elif (data / "manifest.json").is_file():
        manifest = json.loads((data / "manifest.json").read_text())
        paths = [data / case["files"]["ct"] for case in manifest.get("cases", [])]
    elif data.is_dir():
        paths = sorted(p for p in data.iterdir() if _is_volume_file(p) or _is_dicom_folder(p))
        if _is_dicom_folder(data):
            paths.append(data)
    else:
        raise ConfigError(f"--data {data} does not exist")
    if not paths:
        raise ConfigError(
            f"--data {data} names no CT volume (looked for {', '.join(VOLUME_SUFFIXES)} and DICOM)"
        )
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ConfigError(f"--data {data} lists missing volumes: {', '.join(missing[:3])}")
    return paths


@dataclass
class SliceSet:
    """Preprocessed training slices.

    Attributes:
        images: (N, 1, res, res) float16 in [-1, 1] (HU window applied, model grid).
        positions: (N,) float32 relative slice positions.
        sources: the volumes the slices came from.
        skipped: slices left out because the body covered too little of them.
    """

    images: torch.Tensor
    positions: torch.Tensor
    sources: list[str] = field(default_factory=list)
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.positions)

    def batch(self, size: int, generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, ...]:
        """A random batch (with replacement) as float32 images and positions on ``device``."""
        index = torch.randint(len(self), (size,), generator=generator)
        return self.images[index].to(device, torch.float32), self.positions[index].to(device)

    def summary(self) -> dict[str, object]:
        """What the model card and the model file record about the training data."""
        return {
            "volumes": len(self.sources),
            "slices": len(self),
            "skipped_slices": self.skipped,
            "sources": [Path(s).name for s in self.sources],
        }


class PreprocessedVolume(NamedTuple):
    """The usable slices of one volume on the model grid, as training and the anomaly-map head need them."""

    images: torch.Tensor  #: (n, 1, res, res) float16, window-normalised
    positions: torch.Tensor  #: (n,) slice positions
    body: torch.Tensor  #: (n, res, res) bool body mask (the head's synthesis stays inside it)
    skipped: int  #: slices dropped for having too little body


def preprocess_volume(
    volume: Volume,
    resolution: int,
    window: HUWindow,
    *,
    position_method: str = "index",
    min_body_fraction: float = DEFAULT_MIN_BODY_FRACTION,
) -> PreprocessedVolume:
    """One volume -> its slices with enough body, their positions and body masks, on the model grid.

    Positions are computed over the whole volume before any slice is dropped, so skipping an empty slice
    never shifts its neighbours' positions.
    """
    if not 0.0 <= min_body_fraction < 1.0:
        raise ConfigError(f"min_body_fraction must be in [0, 1), got {min_body_fraction}")
    frame = axial_frame(volume)
    canonical = to_canonical(volume.array_zyx, frame).astype(np.float32)
    grid = model_grid(canonical.shape[1:], frame.spacing_kji[1:], resolution)
    body = grid.to_model(body_mask(canonical).astype(np.float32), fill=0.0) > 0.5
    keep = body.mean(axis=(1, 2)) >= min_body_fraction
    images = grid.to_model(window.normalize(torch.from_numpy(canonical[keep])))
    positions = torch.from_numpy(slice_positions(canonical, frame.spacing_kji, position_method)[keep])
    return PreprocessedVolume(
        images.to(torch.float16)[:, None], positions, torch.from_numpy(body[keep]), int((~keep).sum())
    )


def preprocess_volumes(
    paths: list[Path],
    resolution: int,
    window: HUWindow,
    position_method: str = "index",
    min_body_fraction: float = DEFAULT_MIN_BODY_FRACTION,
    progress: bool = False,
) -> Iterator[PreprocessedVolume]:
    """Read and :func:`preprocess_volume` each path in turn (one volume in memory at a time), with a bar.

    Raises:
        VolumeError: a volume cannot be read or is not CT.
    """
    for path in tqdm(paths, desc="reading volumes", unit="vol", disable=not progress):
        yield preprocess_volume(
            read_volume(path),
            resolution,
            window,
            position_method=position_method,
            min_body_fraction=min_body_fraction,
        )


def load_slices(
    paths: Iterable[Path],
    resolution: int,
    window: HUWindow,
    *,
    position_method: str = "index",
    min_body_fraction: float = DEFAULT_MIN_BODY_FRACTION,
    progress: bool = False,
) -> SliceSet:
    """Reads and preprocesses every volume (:func:`preprocess_volume`) into one in-memory set.

    Raises:
        VolumeError: a volume cannot be read or is not CT, or no slice is left.
    """
    paths = list(paths)
    images, positions, skipped = [], [], 0
    for volume in preprocess_volumes(paths, resolution, window, position_method, min_body_fraction, progress):
        images.append(volume.images)
        positions.append(volume.positions)
        skipped += volume.skipped
    if sum(len(p) for p in positions) == 0:
        raise VolumeError(f"no slice with at least {min_body_fraction:.0%} body in {len(paths)} volume(s)")
    return SliceSet(torch.cat(images), torch.cat(positions), [str(p) for p in paths], skipped)
