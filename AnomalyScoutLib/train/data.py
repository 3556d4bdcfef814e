"""Training slices: every usable axial slice of a set of CT volumes, preprocessed once into memory.

The volumes a GAN is trained on here are few and small (tens of volumes, ~100 slices each at 128²), so the
whole set fits in memory as a float16 tensor; reading and resampling it once makes every training step a plain
index into that tensor. The preprocessing is exactly the scoring engine's (window, model grid, positions), so
the model sees at training time what it will see at scoring time. Given a body-part regressor, slices are
placed and range-gated as ``score`` places them (``position.placement.place_and_gate``): the slices ``score``
would not judge are not trained on either (``train/placement.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from AnomalyScoutLib.errors import ConfigError, VolumeError
from AnomalyScoutLib.io.geometry import axial_frame, to_canonical
from AnomalyScoutLib.io.volume import Volume, read_volume
from AnomalyScoutLib.preprocessing import HUWindow, body_mask, model_grid, slice_positions

if TYPE_CHECKING:
    from AnomalyScoutLib.position.network import PositionRegressor

__all__ = [
    "VOLUME_SUFFIXES",
    "PreprocessedVolume",
    "SliceSet",
    "list_volumes",
    "load_slices",
    "merge_out_of_range",
    "no_slice_left",
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

    ``data`` is one of: one volume file; a text file with one path per line (``#`` comments, relative to the
    file's folder); a folder written by ``anomalyscout phantom`` (its ``manifest.json`` names the CT files, so
    label maps and anomaly masks are not mistaken for CT); or any other folder, whose image files and DICOM
    sub-folders are all taken.

    Raises:
        ConfigError: ``data`` does not exist, is a file that is neither a volume nor a text list, or names no
            volume.
    """
    data = Path(data)
    if _is_volume_file(data):
        paths = [data]
    elif data.is_file():
        try:
            text = data.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(
                f"--data {data} is neither a CT volume ({', '.join(VOLUME_SUFFIXES)}) nor a text list of them"
            ) from None
        lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
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
        out_of_range: slices with enough body left out by the range gate, by reason (``"above"``,
            ``"below"``, ``"narrow"``); None when the slices were placed by index (no gate).
    """

    images: torch.Tensor
    positions: torch.Tensor
    sources: list[str] = field(default_factory=list)
    skipped: int = 0
    out_of_range: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.positions)

    def batch(self, size: int, generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, ...]:
        """A random batch (with replacement) as float32 images and positions on ``device``."""
        index = torch.randint(len(self), (size,), generator=generator)
        return self.images[index].to(device, torch.float32), self.positions[index].to(device)

    def summary(self) -> dict[str, object]:
        """What the model card and the model file record about the training data."""
        summary: dict[str, object] = {
            "volumes": len(self.sources),
            "slices": len(self),
            "skipped_slices": self.skipped,
            "sources": [Path(s).name for s in self.sources],
        }
        if self.out_of_range is not None:
            summary["out_of_range_slices"] = dict(self.out_of_range)
        return summary


class PreprocessedVolume(NamedTuple):
    """The usable slices of one volume on the model grid, as training and the anomaly-map head need them."""

    images: torch.Tensor  #: (n, 1, res, res) float16, window-normalised
    positions: torch.Tensor  #: (n,) slice positions
    body: torch.Tensor  #: (n, res, res) bool body mask (the head's synthesis stays inside it)
    skipped: int  #: slices dropped for having too little body
    #: slices with enough body dropped by the range gate, by reason; None when placed by index
    out_of_range: dict[str, int] | None = None


def merge_out_of_range(total: dict[str, int] | None, volume: dict[str, int] | None) -> dict[str, int] | None:
    """Add one volume's range-gate counts to a running total (None: placed by index, nothing counted)."""
    if volume is None:
        return total
    merged = dict(total or {})
    for reason, count in volume.items():
        merged[reason] = merged.get(reason, 0) + count
    return merged


def no_slice_left(min_body_fraction: float, where: str, out_of_range: dict[str, int] | None) -> str:
    """The one line for a training set left empty, with what the range gate dropped."""
    message = f"no slice with at least {min_body_fraction:.0%} body in {where}"
    if out_of_range:
        counts = ", ".join(f"{reason} {count}" for reason, count in sorted(out_of_range.items()))
        message += f" lies in the model's range (out of range, dropped: {counts})"
    return message


def _place(
    canonical: np.ndarray,
    spacing_kji: tuple[float, float, float],
    position_method: str,
    regressor: PositionRegressor | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Every slice's position, and with a regressor the range gate's reason for each (``""``: in range).

    By anatomy the positions are clipped to [0, 1], the range the networks are conditioned on (the engine
    clips alike); by index they are ``slice_positions``' own, unchanged.
    """
    if regressor is None:
        return slice_positions(canonical, spacing_kji, position_method), None
    from AnomalyScoutLib.position.placement import place_and_gate

    placement, gate = place_and_gate(canonical, spacing_kji, regressor, "anatomy")
    return np.clip(placement.positions, 0.0, 1.0), gate.reason


def preprocess_volume(
    volume: Volume,
    resolution: int,
    window: HUWindow,
    *,
    position_method: str = "index",
    min_body_fraction: float = DEFAULT_MIN_BODY_FRACTION,
    regressor: PositionRegressor | None = None,
) -> PreprocessedVolume:
    """One volume -> its slices with enough body, their positions and body masks, on the model grid.

    Positions are computed over the whole volume before any slice is dropped, so skipping an empty slice
    never shifts its neighbours' positions. With ``regressor`` the slices are placed by anatomy
    (``position_method`` is then not used) and the slices with enough body that the range gate marks out of
    range are dropped too, counted by reason.
    """
    if not 0.0 <= min_body_fraction < 1.0:
        raise ConfigError(f"min_body_fraction must be in [0, 1), got {min_body_fraction}")
    frame = axial_frame(volume)
    canonical = to_canonical(volume.array_zyx, frame).astype(np.float32)
    grid = model_grid(canonical.shape[1:], frame.spacing_kji[1:], resolution)
    body = grid.to_model(body_mask(canonical).astype(np.float32), fill=0.0) > 0.5
    enough_body = body.mean(axis=(1, 2)) >= min_body_fraction
    positions, reason = _place(canonical, frame.spacing_kji, position_method, regressor)
    keep, out_of_range = enough_body, None
    if reason is not None:
        keep = enough_body & (reason == "")
        dropped, counts = np.unique(reason[enough_body & ~keep], return_counts=True)
        out_of_range = {str(key): int(count) for key, count in zip(dropped, counts)}
    images = grid.to_model(window.normalize(torch.from_numpy(canonical[keep])))
    return PreprocessedVolume(
        images.to(torch.float16)[:, None],
        torch.from_numpy(positions[keep]),
        torch.from_numpy(body[keep]),
        int((~enough_body).sum()),
        out_of_range,
    )


def preprocess_volumes(
    paths: list[Path],
    resolution: int,
    window: HUWindow,
    position_method: str = "index",
    min_body_fraction: float = DEFAULT_MIN_BODY_FRACTION,
    progress: bool = False,
    *,
    regressor: PositionRegressor | None = None,
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
            regressor=regressor,
        )


def load_slices(
    paths: Iterable[Path],
    resolution: int,
    window: HUWindow,
    *,
    position_method: str = "index",
    min_body_fraction: float = DEFAULT_MIN_BODY_FRACTION,
    progress: bool = False,
    regressor: PositionRegressor | None = None,
) -> SliceSet:
    """Reads and preprocesses every volume (:func:`preprocess_volume`) into one in-memory set.

    Raises:
        VolumeError: a volume cannot be read or is not CT, or no slice is left.
    """
    paths = list(paths)
    images, positions, skipped, out_of_range = [], [], 0, None
    volumes = preprocess_volumes(
        paths, resolution, window, position_method, min_body_fraction, progress, regressor=regressor
    )
    for volume in volumes:
        images.append(volume.images)
        positions.append(volume.positions)
        skipped += volume.skipped
        out_of_range = merge_out_of_range(out_of_range, volume.out_of_range)
    if sum(len(p) for p in positions) == 0:
        raise VolumeError(no_slice_left(min_body_fraction, f"{len(paths)} volume(s)", out_of_range))
    return SliceSet(torch.cat(images), torch.cat(positions), [str(p) for p in paths], skipped, out_of_range)
