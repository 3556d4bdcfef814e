"""Canonical axial order: checked against SimpleITK's own re-orientation, inverted voxel for voxel."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from AnomalyScoutLib.errors import VolumeError
from AnomalyScoutLib.io.geometry import axial_frame, from_canonical, slice_centers_ras, to_canonical
from AnomalyScoutLib.io.volume import Volume, read_volume

DATA = Path(__file__).resolve().parents[2] / "Data"
SPACING_XYZ = (0.7, 0.9, 2.5)
ORIGIN_XYZ = (-120.0, 35.5, 410.0)


def _axis_aligned_directions() -> list[tuple[float, ...]]:
    """All 48 directions made of axis permutations and flips."""
    directions = []
    for permutation in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            matrix = np.zeros((3, 3))
            for file_axis, physical_axis in enumerate(permutation):
                matrix[physical_axis, file_axis] = signs[file_axis]
            directions.append(tuple(matrix.ravel()))
    return directions


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    matrix = np.eye(3)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    return matrix


def _volume(direction: tuple[float, ...], shape_zyx: tuple[int, int, int] = (4, 5, 6)) -> Volume:
    array = np.arange(np.prod(shape_zyx), dtype=np.float32).reshape(shape_zyx)
    return Volume(array, SPACING_XYZ, ORIGIN_XYZ, direction)


def _as_image(volume: Volume) -> sitk.Image:
    image = sitk.GetImageFromArray(volume.array_zyx)
    image.SetSpacing(volume.spacing_xyz)
    image.SetOrigin(volume.origin_xyz)
    image.SetDirection(volume.direction)
    return image


@pytest.mark.parametrize("direction", _axis_aligned_directions())
def test_canonical_order_matches_simpleitk_reorientation_to_lps_and_inverts_exactly(direction):
    volume = _volume(direction)
    frame = axial_frame(volume)
    reoriented = sitk.DICOMOrient(_as_image(volume), "LPS")
    canonical = to_canonical(volume.array_zyx, frame)
    np.testing.assert_array_equal(canonical, sitk.GetArrayFromImage(reoriented))
    assert frame.spacing_kji == pytest.approx(tuple(reversed(reoriented.GetSpacing())))
    np.testing.assert_array_equal(from_canonical(canonical, frame), volume.array_zyx)


@pytest.mark.parametrize("direction", _axis_aligned_directions())
def test_a_canonical_batch_lands_on_the_file_slab_from_canonical_would_fill(direction):
    volume = _volume(direction, shape_zyx=(7, 5, 6))
    frame = axial_frame(volume)
    canonical = to_canonical(volume.array_zyx, frame)
    if frame.axes[0] != 0:  # canonical slices are file columns or rows: no slab
        assert frame.file_slab(0, canonical[:2]) is None
        return
    rebuilt = np.full_like(volume.array_zyx, np.nan)
    for k0, k1 in ((0, 3), (3, 4), (4, 7)):
        z0, slab = frame.file_slab(k0, canonical[k0:k1])
        assert slab.flags.c_contiguous and slab.shape == (k1 - k0, *volume.array_zyx.shape[1:])
        rebuilt[z0 : z0 + len(slab)] = slab
    np.testing.assert_array_equal(rebuilt, volume.array_zyx)
    with pytest.raises(VolumeError, match="outside"):
        frame.file_slab(6, canonical[:2])


@pytest.mark.parametrize("direction", _axis_aligned_directions()[::7])
def test_slice_centres_are_the_physical_centres_of_the_reoriented_slices(direction):
    volume = _volume(direction)
    frame = axial_frame(volume)
    reoriented = sitk.DICOMOrient(_as_image(volume), "LPS")
    cols, rows, n_slices = reoriented.GetSize()
    expected_lps = [
        reoriented.TransformContinuousIndexToPhysicalPoint(((cols - 1) / 2, (rows - 1) / 2, float(k)))
        for k in range(n_slices)
    ]
    expected_ras = np.asarray(expected_lps) * np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(slice_centers_ras(volume, frame), expected_ras, atol=1e-9)
    assert np.all(np.diff(expected_ras[:, 2]) > 0), "canonical slices must run towards superior"


@pytest.mark.parametrize(
    ("rotation_axis", "degrees", "flip"),
    [(0, 20.0, False), (1, -30.0, True), (2, 44.0, True), (0, 10.0, True)],
)
def test_an_oblique_flipped_volume_maps_to_its_nearest_axes_and_back_exactly(rotation_axis, degrees, flip):
    matrix = _rotation(rotation_axis, degrees) @ np.diag([1.0, -1.0 if flip else 1.0, -1.0])
    volume = _volume(tuple(matrix.ravel()), shape_zyx=(5, 7, 9))
    frame = axial_frame(volume)
    assert frame.obliquity_deg == pytest.approx(abs(degrees), abs=1e-6)
    canonical = to_canonical(volume.array_zyx, frame)
    np.testing.assert_array_equal(from_canonical(canonical, frame), volume.array_zyx)
    assert frame.flips[0] is True  # file z points inferior here: canonical k reverses it
    centres = slice_centers_ras(volume, frame)
    image = _as_image(volume)
    _, rows, cols = frame.canonical_shape
    for k, centre in enumerate(centres):
        index_xyz = frame.file_index_zyx(np.array([k, (rows - 1) / 2, (cols - 1) / 2]))[::-1]
        lps = image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in index_xyz))
        np.testing.assert_allclose(centre, np.array(lps) * [-1, -1, 1], atol=1e-9)


def test_per_voxel_maps_with_channels_go_back_to_the_file_grid():
    volume = _volume(tuple(np.diag([-1.0, 1.0, -1.0]).ravel()))
    frame = axial_frame(volume)
    channels = np.stack([volume.array_zyx, -volume.array_zyx], axis=-1)
    canonical = to_canonical(channels, frame)
    assert canonical.shape == (*frame.canonical_shape, 2)
    np.testing.assert_array_equal(from_canonical(canonical, frame), channels)


def test_the_real_nifti_is_recognised_as_ras_and_its_liver_lies_towards_the_top():
    volume = read_volume(DATA / "totalsegmentator_abdomen" / "example_ct.nii.gz")
    liver = read_volume(DATA / "totalsegmentator_abdomen" / "example_ct_liver.nii.gz", validate=False)
    frame = axial_frame(volume)
    assert frame.orientation == "RAS"
    assert frame.canonical_shape == (112, 101, 122)
    liver_k = to_canonical(liver.array_zyx, frame).sum(axis=(1, 2))
    assert liver_k[80:].sum() > 0.9 * liver_k.sum(), "the liver is in the upper slices of this abdomen"
    canonical_liver = to_canonical(liver.array_zyx, frame)
    columns = np.nonzero(canonical_liver.any(axis=(0, 1)))[0]
    assert columns.mean() < canonical_liver.shape[2] / 2, "the liver is on the patient's right: low columns"


def test_a_degenerate_direction_or_a_wrong_shape_is_refused():
    with pytest.raises(VolumeError, match="do not span"):
        axial_frame(_volume((1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)))
    frame = axial_frame(_volume(tuple(np.eye(3).ravel())))
    with pytest.raises(VolumeError, match="first three axes"):
        to_canonical(np.zeros((4, 5, 7)), frame)
    with pytest.raises(VolumeError, match="first three axes"):
        from_canonical(np.zeros((5, 4, 6)), frame)
