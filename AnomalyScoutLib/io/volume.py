"""CT volumes in and out of files, through SimpleITK, with the checks that make a file usable as CT.

A :class:`Volume` keeps the voxels exactly as the file stores them (the file's own axis order, in
Hounsfield units) together with the geometry needed to write a result back onto the same grid. Re-orienting to
the canonical axial order is :mod:`AnomalyScoutLib.io.geometry`'s job, so that reading and writing stay
lossless.

Supported inputs:

- a NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``) or MetaImage (``.mha``, ``.mhd``) file;
- a folder holding one or more DICOM series: the series with the given SeriesInstanceUID, else the one with
  the most files (the chosen UID is kept in :attr:`Volume.series_uid`; :func:`list_dicom_series` lists them
  all);
- a single DICOM file, read **on its own** as a volume of as many slices as the file has frames (a classic
  single-slice file gives a 1-slice volume). Its neighbours in the same folder are not pulled in: to read the
  whole series, pass the folder.

Reading never modifies the input. Every refusal is an :class:`~AnomalyScoutLib.errors.AnomalyScoutError` whose
message names the file and the problem.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import struct
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import SimpleITK as sitk

from AnomalyScoutLib.atomic import atomic_destination
from AnomalyScoutLib.errors import ConfigError, NotCTError, UnreadableVolumeError, VolumeError

__all__ = [
    "MIN_INPLANE_VOXELS",
    "PathLike",
    "Volume",
    "list_dicom_series",
    "read_label_map",
    "read_volume",
    "validate_ct",
    "write_volume",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Smallest accepted number of rows and of columns: below this a "CT" is a thumbnail or an icon, not a scan.
MIN_INPLANE_VOXELS = 16

_MODALITY_TAG = "0008|0060"
_SERIES_UID_TAG = "0020|000e"
_POSITION_TAG = "0020|0032"
_SLICE_GAP_TOLERANCE_MM = 0.01
_NIFTI1_HEADER_BYTES = 348
_NIFTI2_HEADER_BYTES = 540
_WRITABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
# Tolerances for "same grid": label maps written by other tools round spacing/origin in their headers.
_SPACING_RTOL = 1e-4
_ORIGIN_ATOL_MM = 1e-2
_DIRECTION_ATOL = 1e-4


@dataclass(frozen=True, eq=False)
class Volume:
    """A CT volume in Hounsfield units on the grid of the file it came from.

    Attributes:
        array_zyx: float32 voxels, indexed (z, y, x) as SimpleITK returns them (the file's own integer type,
            read-only, when read with ``read_volume(..., native_integers=True)``).
        spacing_xyz: voxel size in mm along the file's x, y, z axes.
        origin_xyz: physical position (LPS, mm) of voxel (0, 0, 0).
        direction: SimpleITK's row-major 3×3 direction cosines (LPS).
        source: the path it was read from, for messages.
        modality: the DICOM Modality when the file says, else ``None``.
        series_uid: the DICOM SeriesInstanceUID when known (the series chosen from a folder).
    """

    array_zyx: np.ndarray
    spacing_xyz: tuple[float, float, float]
    origin_xyz: tuple[float, float, float]
    direction: tuple[float, ...]
    source: str = ""
    modality: str | None = None
    series_uid: str | None = None

    @property
    def name(self) -> str:
        """How messages refer to this volume."""
        return self.source or "volume"


@contextlib.contextmanager
def _quiet_itk() -> Iterator[list[str]]:
    """Silence ITK/GDCM while reading, and collect what its C++ code printed on the native stderr.

    ITK's warning display covers ITK's own warnings, but readers such as MetaImage and GDCM also write
    straight to file descriptor 2. That text is noise when a read succeeds and the real reason when it fails,
    so it is captured into the yielded list (filled when the block ends) rather than shown.
    """
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    captured: list[str] = []
    try:
        sys.stderr.flush()
        saved_fd = os.dup(2)
    except (AttributeError, OSError, ValueError):  # no usable stderr (e.g. a GUI process): nothing to silence
        saved_fd = None
    try:
        with tempfile.TemporaryFile() as sink:
            if saved_fd is not None:
                os.dup2(sink.fileno(), 2)
            try:
                yield captured
            finally:
                if saved_fd is not None:
                    os.dup2(saved_fd, 2)
                    os.close(saved_fd)
                sink.seek(0)
                captured.extend(line.strip() for line in sink.read().decode(errors="replace").splitlines())
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def _itk_reason(error: RuntimeError, printed: list[str]) -> str:
    """One readable line from an ITK exception (many lines with source locations) and its printed output."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or ["unknown reason"]
    described = [line.split("Description:", 1)[1].strip() for line in lines if "Description:" in line]
    flagged = [line.split("ERROR:", 1)[1].split("):", 1)[-1].strip() for line in lines if "ERROR:" in line]
    reason = (described or flagged or lines)[-1]
    if reason.endswith(":") and lines[-1] not in reason:  # e.g. NRRD: "Error reading F:" + the deepest cause
        reason = f"{reason} {lines[-1]}"
    detail = next((line for line in printed if line), None)
    return f"{reason} ({detail})" if detail else reason


def _read_with_itk(read: Callable[[], sitk.Image], failure: str) -> sitk.Image:
    """Run a SimpleITK read quietly; turn its RuntimeError into an UnreadableVolumeError with ``failure``."""
    with _quiet_itk() as printed:
        try:
            return read()
        except RuntimeError as error:
            caught = error
    raise UnreadableVolumeError(f"{failure}: {_itk_reason(caught, printed)}") from None


def _metadata(image: sitk.Image, key: str) -> str | None:
    return (image.GetMetaData(key).strip() or None) if image.HasMetaDataKey(key) else None


def list_dicom_series(folder: PathLike) -> list[tuple[str, int]]:
    """List the DICOM series directly in ``folder`` as ``(SeriesInstanceUID, file count)``, largest first.

    Ties are broken by UID so that the choice of "the largest series" is the same on every machine.
    """
    with _quiet_itk():
        uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        counts = [(uid, len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))) for uid in uids]
    return sorted(counts, key=lambda item: (-item[1], item[0]))


def _read_dicom_folder(folder: Path, series_uid: str | None) -> tuple[sitk.Image, str | None, str]:
    series = list_dicom_series(folder)
    if not series:
        raise UnreadableVolumeError(
            f"{folder}: no DICOM series in this folder (sub-folders are not searched; for NIfTI/NRRD/MHA "
            "give the file itself)"
        )
    available = dict(series)
    if series_uid is None:
        series_uid = series[0][0]
    elif series_uid not in available:
        listing = ", ".join(f"{uid} ({count} files)" for uid, count in series)
        raise VolumeError(f"{folder}: no DICOM series {series_uid}; this folder holds: {listing}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid))
    reader.MetaDataDictionaryArrayUpdateOn()
    image = _read_with_itk(reader.Execute, f"{folder}: DICOM series {series_uid} cannot be read")
    _check_slice_spacing(reader, image, f"{folder}: DICOM series {series_uid}")
    modality = None
    if reader.HasMetaDataKey(0, _MODALITY_TAG):
        modality = reader.GetMetaData(0, _MODALITY_TAG).strip() or None
    return image, modality, series_uid


def _check_slice_spacing(reader: sitk.ImageSeriesReader, image: sitk.Image, name: str) -> None:
    """Refuse a series whose slices are not evenly spaced (missing or duplicated slices).

    ITK stacks such a series anyway with one spacing (it only warns), which puts every slice after a gap at
    the wrong place: a score map would then point at the wrong anatomy.
    """
    n_files = len(reader.GetFileNames())
    if n_files < 3 or n_files != image.GetSize()[2]:
        return
    if not all(reader.HasMetaDataKey(i, _POSITION_TAG) for i in range(n_files)):
        return
    normal = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)[:, 2]
    try:
        positions = [
            [float(v) for v in reader.GetMetaData(i, _POSITION_TAG).split("\\")] for i in range(n_files)
        ]
    except ValueError:
        return
    steps = np.abs(np.diff(np.asarray(positions) @ normal))
    if steps.min() < 1e-3:
        raise VolumeError(f"{name}: two slices share the same position (duplicated slices)")
    if steps.max() - steps.min() > max(_SLICE_GAP_TOLERANCE_MM, 0.1 * float(np.median(steps))):
        raise VolumeError(
            f"{name}: slices are unevenly spaced ({steps.min():.2f} to {steps.max():.2f} mm apart); "
            "a slice is missing or the series mixes acquisitions"
        )


def _read_image_file(path: Path) -> sitk.Image:
    if path.name.lower().endswith((".nii", ".nii.gz")):
        _check_nifti_complete(path)
    return _read_with_itk(
        lambda: sitk.ReadImage(str(path)),
        f"{path}: cannot be read as an image (unknown format, corrupt or truncated)",
    )


def _check_nifti_complete(path: Path) -> None:
    """Refuse a truncated NIfTI file, which ITK would silently read with its missing voxels set to zero.

    The header gives the data size; the file (decompressed, for ``.nii.gz``) must be at least that long. For
    gzip the trailer's recorded size settles it at once in the usual case (the last 4 bytes of a cut file are
    compressed data, which match the expected size only by a 2⁻³² chance); otherwise the stream is
    decompressed to measure it. A header that cannot be parsed is left for ITK to report.
    """
    compressed = path.name.lower().endswith(".gz")
    unreadable = UnreadableVolumeError(
        f"{path}: not a readable gzip-compressed NIfTI file (truncated or corrupt)"
    )
    try:
        with (gzip.open if compressed else open)(path, "rb") as stream:
            header = stream.read(_NIFTI2_HEADER_BYTES)
    except (OSError, EOFError, zlib.error):
        raise unreadable from None
    expected = _nifti_expected_length(header)
    if expected is None:
        return
    if not compressed:
        length = path.stat().st_size
    else:
        with open(path, "rb") as raw:
            raw.seek(max(path.stat().st_size - 4, 0))
            trailer = raw.read(4)
        if len(trailer) == 4 and struct.unpack("<I", trailer)[0] == expected % 2**32:
            return
        try:
            with gzip.open(path, "rb") as stream:
                length = sum(len(chunk) for chunk in iter(lambda: stream.read(1 << 20), b""))
        except (OSError, EOFError, zlib.error):
            raise unreadable from None
    if length < expected:
        raise UnreadableVolumeError(f"{path}: truncated NIfTI file ({length} of {expected} bytes)")


def _nifti_expected_length(header: bytes) -> int | None:
    """Bytes a NIfTI-1/-2 file needs (header offset + voxel data), or None if ``header`` is not NIfTI."""
    for endian in "<>":
        if len(header) >= _NIFTI1_HEADER_BYTES and struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if len(header) >= _NIFTI2_HEADER_BYTES and struct.unpack(endian + "i", header[:4])[0] == 540:
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = struct.unpack(endian + "q", header[168:176])[0]
            break
    else:
        return None
    if not 1 <= dims[0] <= 7 or bitpix <= 0:
        return None
    voxels = int(np.prod([max(int(d), 1) for d in dims[1 : dims[0] + 1]], dtype=np.int64))
    return offset + voxels * bitpix // 8


def _read_image(path: PathLike, series_uid: str | None) -> tuple[sitk.Image, Path, str | None, str | None]:
    """Read a file or DICOM folder; return the image, the path, its modality and series UID when known."""
    path = Path(path)
    if not path.exists():
        raise UnreadableVolumeError(f"{path}: no such file or folder")
    if path.is_dir():
        image, modality, uid = _read_dicom_folder(path, series_uid)
        return image, path, modality, uid
    if series_uid is not None:
        raise ConfigError(f"{path}: a series UID can only be chosen when reading a DICOM folder")
    image = _read_image_file(path)
    return image, path, _metadata(image, _MODALITY_TAG), _metadata(image, _SERIES_UID_TAG)


def _check_scalar_3d(image: sitk.Image, path: Path) -> None:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(
            f"{path}: has {image.GetNumberOfComponentsPerPixel()} values per voxel (RGB/vector image); "
            "CT needs one Hounsfield value per voxel"
        )
    if image.GetDimension() != 3:
        raise VolumeError(
            f"{path}: is a {image.GetDimension()}-D image of size {image.GetSize()}; a 3-D CT volume is "
            "needed (a single DICOM slice is accepted as a 1-slice volume)"
        )


def _geometry(image: sitk.Image) -> dict[str, tuple[float, ...]]:
    return {
        "spacing_xyz": tuple(float(v) for v in image.GetSpacing()),
        "origin_xyz": tuple(float(v) for v in image.GetOrigin()),
        "direction": tuple(float(v) for v in image.GetDirection()),
    }


class _ImageVoxels:
    """A SimpleITK image's voxels for ``np.asarray``: the array made from it is a view of the image's buffer
    that keeps the image alive (``sitk.GetArrayViewFromImage`` alone would not) and cannot be written to."""

    def __init__(self, image: sitk.Image) -> None:
        self._image = image
        view = sitk.GetArrayViewFromImage(image)
        interface = dict(view.__array_interface__)
        interface["data"] = (interface["data"][0], True)  # read-only: the buffer is the image's
        self.__array_interface__ = interface


def read_volume(
    path: PathLike, series_uid: str | None = None, *, validate: bool = True, native_integers: bool = False
) -> Volume:
    """Read a CT volume from a file or a DICOM series folder.

    Args:
        path: NIfTI/NRRD/MHA file, single DICOM file, or folder with DICOM series (see the module docstring).
        series_uid: for a folder, the SeriesInstanceUID to read; by default the series with the most files.
        validate: run :func:`validate_ct` (turn it off only for data known to be fine, e.g. in tests).
        native_integers: keep integer voxels (int16 CT) in the file's own type, as a read-only view of the
            buffer SimpleITK read them into, instead of converting the whole volume to float32. For a caller
            that converts slice batch by batch anyway (the scorer): for a 512x512x300 CT the float32 copy,
            and even a plain copy, costs more CPU than reading the file (fresh pages of memory) and doubles
            the memory the volume holds. Float files are a writable float32 array either way.

    Raises:
        UnreadableVolumeError: missing, unknown, corrupt or truncated input; a folder with no DICOM series.
        NotCTError: DICOM modality other than CT, 8-bit pixels, or values that cannot be Hounsfield units.
        VolumeError: vector/RGB pixels, not 3-D, empty or tiny, NaN/inf values, unknown series UID.
        ConfigError: ``series_uid`` given for a single file.
    """
    image, path, modality, uid = _read_image(path, series_uid)
    _check_scalar_3d(image, path)
    if image.GetPixelID() in (sitk.sitkUInt8, sitk.sitkInt8):
        raise NotCTError(
            f"{path}: stores 8-bit pixels ({image.GetPixelIDTypeAsString()}), which cannot hold Hounsfield "
            "units; this looks like a photo or screenshot, not CT"
        )
    if native_integers and np.issubdtype(sitk.GetArrayViewFromImage(image).dtype, np.integer):
        array = np.asarray(_ImageVoxels(image))
    else:
        array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    volume = Volume(
        array_zyx=array,
        source=str(path),
        modality=modality,
        series_uid=uid,
        **_geometry(image),
    )
    if validate:
        validate_ct(volume)
    return volume


def validate_ct(volume: Volume) -> None:
    """Refuse a volume that cannot be CT in Hounsfield units, or that is too small to score.

    The value test is deliberately narrow so that real CT always passes: CT in HU contains air (about
    -1000 HU), so a volume whose values all lie in 0..255 is an 8-bit greyscale image, not a scan.

    Raises:
        NotCTError: the DICOM modality is not CT, or all values lie in 0..255.
        VolumeError: not 3-D, empty, non-positive spacing, fewer than :data:`MIN_INPLANE_VOXELS` rows or
            columns, NaN/inf, or constant.
    """
    array = volume.array_zyx
    name = volume.name
    if volume.modality is not None and volume.modality.upper() != "CT":
        raise NotCTError(f"{name}: DICOM modality is {volume.modality}, not CT")
    if array.ndim != 3:
        raise VolumeError(f"{name}: is {array.ndim}-D; a 3-D volume is needed")
    if array.size == 0:
        raise VolumeError(f"{name}: is empty (shape {array.shape})")
    if not all(np.isfinite(s) and s > 0 for s in volume.spacing_xyz):
        raise VolumeError(f"{name}: voxel spacing {volume.spacing_xyz} mm is not positive (broken header)")
    rows, cols = array.shape[1:]
    if min(rows, cols) < MIN_INPLANE_VOXELS:
        raise VolumeError(
            f"{name}: slices of {rows}×{cols} voxels are too small "
            f"(at least {MIN_INPLANE_VOXELS}×{MIN_INPLANE_VOXELS})"
        )
    finite = np.isfinite(array) if np.issubdtype(array.dtype, np.floating) else None  # integers always are
    if finite is not None and not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        raise VolumeError(f"{name}: {bad} voxel(s) are NaN or infinite")
    low, high = float(array.min()), float(array.max())
    if low == high:
        raise VolumeError(f"{name}: every voxel has the same value ({low:g}); there is no image in it")
    if low >= 0.0 and high <= 255.0:
        raise NotCTError(
            f"{name}: values span {low:g}..{high:g}, like an 8-bit greyscale image; CT in Hounsfield units "
            "has air near -1000"
        )


def _grid_mismatches(image: sitk.Image, reference: Volume) -> list[str]:
    problems = []
    size_zyx = tuple(reversed(image.GetSize()))
    if size_zyx != reference.array_zyx.shape:
        problems.append(f"size {image.GetSize()} vs {tuple(reversed(reference.array_zyx.shape))}")
    geometry = _geometry(image)
    if not np.allclose(geometry["spacing_xyz"], reference.spacing_xyz, rtol=_SPACING_RTOL, atol=0):
        problems.append(f"spacing {geometry['spacing_xyz']} vs {reference.spacing_xyz}")
    if not np.allclose(geometry["origin_xyz"], reference.origin_xyz, rtol=0, atol=_ORIGIN_ATOL_MM):
        problems.append(f"origin {geometry['origin_xyz']} vs {reference.origin_xyz}")
    if not np.allclose(geometry["direction"], reference.direction, rtol=0, atol=_DIRECTION_ATOL):
        problems.append(f"direction {geometry['direction']} vs {reference.direction}")
    return problems


def read_label_map(path: PathLike, reference: Volume | None = None) -> np.ndarray:
    """Read an integer label map (segmentation) as an int32 ``array_zyx`` on the file's own grid.

    Args:
        path: any file or DICOM folder :func:`read_volume` accepts.
        reference: when given, the label map must lie on exactly this volume's grid (size, spacing, origin,
            direction, with small tolerances for header rounding), so that labels and CT voxels correspond.

    Raises:
        UnreadableVolumeError: as for :func:`read_volume`.
        VolumeError: not a 3-D scalar image, non-integer or non-finite values, or a grid unlike
            ``reference``'s.
    """
    image, path, _, _ = _read_image(path, None)
    _check_scalar_3d(image, path)
    if reference is not None:
        problems = _grid_mismatches(image, reference)
        if problems:
            mismatches = "; ".join(problems)
            raise VolumeError(f"{path}: label map is not on the grid of {reference.name}: {mismatches}")
    array = sitk.GetArrayFromImage(image)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
            raise VolumeError(f"{path}: a label map needs whole-number labels; found fractional or NaN ones")
    return array.astype(np.int32, copy=False)


def _writable_suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in _WRITABLE_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    raise ConfigError(f"{path}: cannot write this format; use one of {', '.join(_WRITABLE_SUFFIXES)}")


def write_volume(volume: Volume, path: PathLike) -> None:
    """Write ``volume`` (any voxel dtype, e.g. a float heatmap) atomically to a single file.

    The data go to a temporary file in the destination folder, which then replaces ``path`` in one step: a
    crash or a full disk never leaves a half-written file under the final name. Single-file formats only
    (``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha``), so that the one rename covers all of the data.

    Raises:
        ConfigError: unsupported extension or missing destination folder.
        VolumeError: the array is not 3-D.
    """
    path = Path(path)
    suffix = _writable_suffix(path)
    if not path.parent.is_dir():
        raise ConfigError(f"{path}: the folder {path.parent} does not exist")
    if volume.array_zyx.ndim != 3:
        raise VolumeError(f"{volume.name}: cannot write a {volume.array_zyx.ndim}-D array as a volume")
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array_zyx))
    image.SetSpacing(volume.spacing_xyz)
    image.SetOrigin(volume.origin_xyz)
    image.SetDirection(volume.direction)
    with atomic_destination(path, suffix=f".tmp{suffix}") as temporary:
        sitk.WriteImage(image, str(temporary), useCompression=suffix != ".nii")
