"""The canonical axial order, reached from any file orientation by an exact axis permutation and flips.

Models see every CT in one orientation: array axes ``(k, row, col)`` with k increasing towards the patient's
superior, rows towards posterior and columns towards the patient's left (the radiological display of an axial
slice). These are the LPS axes (S, P, L) = (+z, +y, +x), so the canonical array is the file's array re-indexed
so that its axes follow LPS z, y, x in increasing order.

Only permutations and flips are used, never interpolation: :func:`from_canonical` undoes
:func:`to_canonical` voxel for voxel, so a map computed per canonical slice lands back on the input's exact
grid. An oblique file is mapped by the nearest axes (the permutation that best matches its direction cosines);
its slices are then the file's own slices, slightly tilted, and :func:`slice_centers_ras` still gives their
true physical centres.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from AnomalyScoutLib.errors import VolumeError
from AnomalyScoutLib.io.volume import Volume

__all__ = ["AxialFrame", "axial_frame", "from_canonical", "slice_centers_ras", "to_canonical"]

# Letters for +x, +y, +z of LPS and their opposites, for orientation codes such as "LPS" or "RAI".
_POSITIVE_LETTERS = "LPS"
_NEGATIVE_LETTERS = "RAI"
_MIN_ABS_DETERMINANT = 1e-3


@dataclass(frozen=True)
class AxialFrame:
    """How a file's ``array_zyx`` maps onto the canonical ``(k, row, col)`` order.

    Attributes:
        shape_zyx: shape of the file's array.
        axes: for each canonical axis (k, row, col), the file-array axis it is taken from.
        flips: for each canonical axis, whether that file axis runs the opposite way and is reversed.
        spacing_kji: voxel size in mm along the canonical axes (slice spacing, row spacing, column spacing).
        orientation: the file's ITK-style orientation code, one letter per file axis x, y, z naming where it
            points (``"LPS"`` for a standard DICOM axial series, ``"LAS"`` for a typical NIfTI).
        obliquity_deg: largest angle between a file axis and the patient axis it was matched to
            (0 = straight).
    """

    shape_zyx: tuple[int, int, int]
    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    spacing_kji: tuple[float, float, float]
    orientation: str
    obliquity_deg: float

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        """Shape of the canonical array: (slices, rows, columns)."""
        return tuple(self.shape_zyx[axis] for axis in self.axes)  # type: ignore[return-value]

    @property
    def n_slices(self) -> int:
        return self.canonical_shape[0]

    def file_slab(self, k0: int, batch_kji: np.ndarray) -> tuple[int, np.ndarray] | None:
        """Canonical slices ``k0 : k0 + len(batch_kji)`` as the block of file z slices they are.

        Returns ``(z0, slab_zyx)``: a C-contiguous ``slab_zyx`` that is the file array's ``z0 : z0 + n`` (in
        file order, as :func:`from_canonical` would place it), so that a writer can store a batch as one
        contiguous piece of the file. ``None`` when the canonical slices are not the file's z slices (a
        sagittal or coronal acquisition): a batch is then scattered over the whole file.
        """
        if self.axes[0] != 0:
            return None
        batch_kji = np.asarray(batch_kji)
        _check_grid(batch_kji, (len(batch_kji), *self.canonical_shape[1:]), "canonical batch")
        if not 0 <= k0 <= self.n_slices - len(batch_kji):
            raise VolumeError(f"slices {k0}..{k0 + len(batch_kji)} lie outside 0..{self.n_slices}")
        flipped = tuple(axis for axis, flip in enumerate(self.flips) if flip)
        unflipped = np.flip(batch_kji, axis=flipped) if flipped else batch_kji
        z0 = self.n_slices - k0 - len(batch_kji) if self.flips[0] else k0
        inverse = tuple(int(i) for i in np.argsort(self.axes))
        return z0, np.ascontiguousarray(np.transpose(unflipped, inverse))

    def file_index_zyx(self, canonical_kji: np.ndarray) -> np.ndarray:
        """Map (continuous) canonical indices ``(..., 3)`` to file-array indices ``(..., 3)``, z y x order."""
        canonical_kji = np.asarray(canonical_kji, dtype=np.float64)
        file_zyx = np.empty_like(canonical_kji)
        for canonical_axis, (file_axis, flip) in enumerate(zip(self.axes, self.flips)):
            values = canonical_kji[..., canonical_axis]
            file_zyx[..., file_axis] = (self.shape_zyx[file_axis] - 1) - values if flip else values
        return file_zyx


def _direction_matrix(volume: Volume) -> np.ndarray:
    if len(volume.direction) != 9:
        raise VolumeError(f"{volume.name}: direction has {len(volume.direction)} values, 9 are needed")
    matrix = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < _MIN_ABS_DETERMINANT:
        raise VolumeError(f"{volume.name}: direction cosines {volume.direction} do not span 3-D space")
    return matrix


def axial_frame(volume: Volume) -> AxialFrame:
    """Find the permutation and flips that bring ``volume``'s array into canonical axial order.

    Column ``c`` of the direction matrix is the physical (LPS) direction of file axis ``c`` (x, y, z). Each
    LPS axis is assigned the file axis that points most nearly along it; the assignment maximising the summed
    alignment over all six permutations keeps it a bijection even for strongly oblique directions.

    Raises:
        VolumeError: the array is not 3-D or the direction cosines are degenerate.
    """
    if volume.array_zyx.ndim != 3:
        raise VolumeError(f"{volume.name}: is {volume.array_zyx.ndim}-D; a 3-D volume is needed")
    matrix = _direction_matrix(volume)
    alignment = np.abs(matrix)  # alignment[physical_axis, file_axis_xyz]
    best = max(
        itertools.permutations(range(3)), key=lambda perm: sum(alignment[p, c] for c, p in enumerate(perm))
    )
    # best[c] = LPS axis matched to file axis c (x=0, y=1, z=2).
    physical_to_file_xyz = {physical: file_axis for file_axis, physical in enumerate(best)}
    axes, flips, spacing = [], [], []
    for physical in (2, 1, 0):  # canonical k, row, col follow LPS z, y, x
        file_axis_xyz = physical_to_file_xyz[physical]
        axes.append(2 - file_axis_xyz)  # array axes run z, y, x
        flips.append(bool(matrix[physical, file_axis_xyz] < 0))
        spacing.append(float(volume.spacing_xyz[file_axis_xyz]))
    orientation = "".join(
        (_POSITIVE_LETTERS if matrix[p, c] > 0 else _NEGATIVE_LETTERS)[p] for c, p in enumerate(best)
    )
    norms = np.linalg.norm(matrix, axis=0)
    cosines = [abs(matrix[p, c]) / norms[c] for c, p in enumerate(best)]
    obliquity = float(np.degrees(np.arccos(np.clip(min(cosines), -1.0, 1.0))))
    return AxialFrame(
        shape_zyx=tuple(int(n) for n in volume.array_zyx.shape),  # type: ignore[arg-type]
        axes=tuple(axes),  # type: ignore[arg-type]
        flips=tuple(flips),  # type: ignore[arg-type]
        spacing_kji=tuple(spacing),  # type: ignore[arg-type]
        orientation=orientation,
        obliquity_deg=obliquity,
    )


def _check_grid(array: np.ndarray, expected: tuple[int, ...], what: str) -> None:
    if array.ndim < 3 or tuple(array.shape[:3]) != tuple(expected):
        raise VolumeError(f"{what} has shape {array.shape}; its first three axes must be {tuple(expected)}")


def to_canonical(array_zyx: np.ndarray, frame: AxialFrame) -> np.ndarray:
    """Re-index any per-voxel array on the file's grid (trailing channel axes allowed) into canonical order.

    Returns a new contiguous array, so writing to it never touches the input.
    """
    array_zyx = np.asarray(array_zyx)
    _check_grid(array_zyx, frame.shape_zyx, "array")
    trailing = tuple(range(3, array_zyx.ndim))
    canonical = np.transpose(array_zyx, frame.axes + trailing)
    flipped = tuple(axis for axis, flip in enumerate(frame.flips) if flip)
    return np.ascontiguousarray(np.flip(canonical, axis=flipped) if flipped else canonical)


def from_canonical(array_kji: np.ndarray, frame: AxialFrame) -> np.ndarray:
    """Exact inverse of :func:`to_canonical`: bring a canonical array back onto the file's grid."""
    array_kji = np.asarray(array_kji)
    _check_grid(array_kji, frame.canonical_shape, "canonical array")
    flipped = tuple(axis for axis, flip in enumerate(frame.flips) if flip)
    unflipped = np.flip(array_kji, axis=flipped) if flipped else array_kji
    inverse = tuple(int(i) for i in np.argsort(frame.axes)) + tuple(range(3, array_kji.ndim))
    return np.ascontiguousarray(np.transpose(unflipped, inverse))


def slice_centers_ras(volume: Volume, frame: AxialFrame) -> np.ndarray:
    """Physical centre (RAS, mm) of every canonical slice, shape ``(n_slices, 3)``.

    The centre of slice k is the point at canonical index ``(k, (rows - 1) / 2, (cols - 1) / 2)``; Slicer
    jumps to a slice by this point. RAS is LPS with x and y negated.
    """
    n_slices, rows, cols = frame.canonical_shape
    canonical = np.stack(
        [
            np.arange(n_slices, dtype=np.float64),
            np.full(n_slices, (rows - 1) / 2),
            np.full(n_slices, (cols - 1) / 2),
        ],
        axis=1,
    )
    index_xyz = frame.file_index_zyx(canonical)[:, ::-1]
    matrix = _direction_matrix(volume)
    lps = np.asarray(volume.origin_xyz) + (index_xyz * np.asarray(volume.spacing_xyz)) @ matrix.T
    return lps * np.array([-1.0, -1.0, 1.0])
