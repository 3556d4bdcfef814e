"""Reading, validating and writing CT volumes: real fixtures round-trip, bad files are refused by name."""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from AnomalyScoutLib.errors import ConfigError, NotCTError, UnreadableVolumeError, VolumeError
from AnomalyScoutLib.io import volume as volume_module
from AnomalyScoutLib.io.volume import (
    Volume,
    list_dicom_series,
    read_label_map,
    read_volume,
    validate_ct,
    write_volume,
)

DATA = Path(__file__).resolve().parents[2] / "Data"
NIFTI = DATA / "totalsegmentator_abdomen" / "example_ct.nii.gz"
NIFTI_SMALL = DATA / "totalsegmentator_abdomen" / "example_ct_sm.nii.gz"
DICOM_SERIES = DATA / "dcmqi_3slice" / "ct-3slice"
DICOM_LIVER = DATA / "dcmqi_3slice" / "liver_seg.nrrd"
JPEG2000_SLICE = DATA / "single_slices" / "explicit_VR-UN.dcm"
SMALL_SLICE = DATA / "single_slices" / "CT_small.dcm"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ct_like(shape_zyx: tuple[int, int, int] = (4, 32, 32), seed: int = 0) -> np.ndarray:
    """A small int16 array with air and tissue values, so that it passes the CT checks."""
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 400, size=shape_zyx).astype(np.int16)


def _write_dicom_series(
    folder: Path,
    array_zyx: np.ndarray,
    series_uid: str,
    modality: str = "CT",
    z_positions: list[float] | None = None,
) -> None:
    """Write one DICOM file per slice with the tags a series reader needs (slices 2.5 mm apart by default)."""
    folder.mkdir(parents=True, exist_ok=True)
    z_positions = z_positions or [2.5 * k for k in range(len(array_zyx))]
    for k, section in enumerate(array_zyx):
        image = sitk.GetImageFromArray(section)
        image.SetSpacing((0.7, 0.7))
        tags = {
            "0008|0060": modality,
            "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": f"0\\0\\{z_positions[k]}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"{series_uid.rsplit('.', 1)[-1]}_{k:03d}.dcm"))
        writer.Execute(image)


def _write_image(path: Path, array: np.ndarray, is_vector: bool = False) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=is_vector), str(path))
    return path


def _truncate_copy(source: Path, target: Path) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


# --- reading real CT ---


def test_reads_the_real_nifti_in_hounsfield_units_with_its_geometry():
    reference = sitk.ReadImage(str(NIFTI))
    volume = read_volume(NIFTI)
    assert volume.array_zyx.dtype == np.float32
    assert volume.array_zyx.shape == tuple(reversed(reference.GetSize()))
    np.testing.assert_array_equal(volume.array_zyx, sitk.GetArrayFromImage(reference))
    assert volume.spacing_xyz == pytest.approx(reference.GetSpacing())
    assert volume.origin_xyz == pytest.approx(reference.GetOrigin())
    assert volume.direction == pytest.approx(reference.GetDirection())
    assert volume.source == str(NIFTI)


def test_native_integers_keep_an_int16_ct_as_stored_and_floats_as_float32(tmp_path):
    array = _ct_like()
    path = _write_image(tmp_path / "int16.nrrd", array)
    voxels = read_volume(path, native_integers=True).array_zyx  # the Volume and its image are gone...
    gc.collect()
    assert voxels.dtype == np.int16 and not voxels.flags.writeable
    np.testing.assert_array_equal(voxels, array)  # ...but the view keeps the voxels alive
    assert read_volume(path).array_zyx.dtype == np.float32 and read_volume(path).array_zyx.flags.writeable
    floats = _write_image(tmp_path / "float64.nrrd", array.astype(np.float64))
    assert read_volume(floats, native_integers=True).array_zyx.dtype == np.float32


def test_an_integer_volume_is_still_checked_for_a_constant_value(tmp_path):
    path = _write_image(tmp_path / "flat.nrrd", np.full((4, 32, 32), -1000, np.int16))
    with pytest.raises(VolumeError, match="same value"):
        read_volume(path, native_integers=True)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_writes_and_rereads_a_volume_voxel_for_voxel(tmp_path, suffix):
    original = read_volume(NIFTI_SMALL)
    target = tmp_path / f"copy{suffix}"
    write_volume(original, target)
    again = read_volume(target)
    np.testing.assert_array_equal(again.array_zyx, original.array_zyx)
    assert again.spacing_xyz == pytest.approx(original.spacing_xyz)
    assert again.origin_xyz == pytest.approx(original.origin_xyz, abs=1e-4)
    assert again.direction == pytest.approx(original.direction)
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name], "a temporary file was left behind"


def test_reads_the_three_slice_dicom_series_and_its_liver_label_on_the_same_grid(tmp_path):
    volume = read_volume(DICOM_SERIES)
    assert volume.array_zyx.shape == (3, 512, 512)
    assert volume.modality == "CT"
    assert volume.series_uid == list_dicom_series(DICOM_SERIES)[0][0]
    assert volume.array_zyx.min() < -900 and volume.array_zyx.max() > 500
    liver = read_label_map(DICOM_LIVER, reference=volume)
    assert liver.shape == volume.array_zyx.shape
    assert set(np.unique(liver)) == {0, 1}
    assert np.median(volume.array_zyx[liver == 1]) == pytest.approx(100, abs=80), (
        "the label is not on the liver"
    )
    write_volume(volume, tmp_path / "series.nrrd")
    again = read_volume(tmp_path / "series.nrrd")
    np.testing.assert_array_equal(again.array_zyx, volume.array_zyx)
    np.testing.assert_array_equal(read_label_map(DICOM_LIVER, reference=again), liver)


def test_reads_a_single_jpeg2000_dicom_slice_as_a_one_slice_volume(tmp_path):
    volume = read_volume(JPEG2000_SLICE)
    assert volume.array_zyx.shape == (1, 512, 512)
    assert volume.modality == "CT"
    assert volume.spacing_xyz[:2] == pytest.approx((0.859375, 0.859375))
    write_volume(volume, tmp_path / "slice.nrrd")
    again = read_volume(tmp_path / "slice.nrrd")
    np.testing.assert_array_equal(again.array_zyx, volume.array_zyx)
    assert again.direction == pytest.approx(volume.direction)


def test_picks_the_largest_series_of_a_folder_unless_told_which(tmp_path):
    big, small = "1.2.826.0.1.3680043.2.1125.201", "1.2.826.0.1.3680043.2.1125.202"
    _write_dicom_series(tmp_path, _ct_like((5, 32, 32), seed=1), big)
    _write_dicom_series(tmp_path, _ct_like((3, 32, 32), seed=2), small)
    assert list_dicom_series(tmp_path) == [(big, 5), (small, 3)]
    chosen = read_volume(tmp_path)
    assert chosen.series_uid == big
    np.testing.assert_array_equal(chosen.array_zyx, _ct_like((5, 32, 32), seed=1))
    assert chosen.spacing_xyz == pytest.approx((0.7, 0.7, 2.5))
    requested = read_volume(tmp_path, series_uid=small)
    assert requested.series_uid == small
    np.testing.assert_array_equal(requested.array_zyx, _ct_like((3, 32, 32), seed=2))


def test_an_unknown_series_uid_is_refused_with_the_series_the_folder_holds():
    with pytest.raises(VolumeError, match="1.2.3.4.5.6.*holds: .*3 files"):
        read_volume(DICOM_SERIES, series_uid="1.2.3.4.5.6")


def test_a_series_uid_for_a_single_file_is_a_usage_error():
    with pytest.raises(ConfigError, match="DICOM folder"):
        read_volume(SMALL_SLICE, series_uid="1.2.3")


def test_reading_leaves_every_input_file_byte_for_byte_unchanged():
    files = sorted(p for p in DATA.rglob("*") if p.is_file() and p.suffix != ".md")
    before = {p: (_sha256(p), p.stat().st_mtime_ns) for p in files}
    for path in (NIFTI, NIFTI_SMALL, DICOM_SERIES, JPEG2000_SLICE, SMALL_SLICE):
        read_volume(path)
    read_label_map(DICOM_LIVER)
    after = {p: (_sha256(p), p.stat().st_mtime_ns) for p in files}
    assert after == before
    assert sorted(p for p in DATA.rglob("*") if p.is_file() and p.suffix != ".md") == files


# --- refusals ---


def _mr_series(tmp_path: Path) -> Path:
    _write_dicom_series(tmp_path / "mr", _ct_like(), "1.2.826.0.1.3680043.2.1125.301", modality="MR")
    return tmp_path / "mr"


def _mr_single_file(tmp_path: Path) -> Path:
    _write_dicom_series(
        tmp_path / "mr1", _ct_like((1, 32, 32)), "1.2.826.0.1.3680043.2.1125.302", modality="PT"
    )
    return next((tmp_path / "mr1").iterdir())


def _series_with_a_gap(tmp_path: Path) -> Path:
    _write_dicom_series(
        tmp_path / "gap",
        _ct_like((4, 32, 32)),
        "1.2.826.0.1.3680043.2.1125.303",
        z_positions=[0, 2.5, 7.5, 10],
    )
    return tmp_path / "gap"


def _series_with_a_duplicate(tmp_path: Path) -> Path:
    _write_dicom_series(
        tmp_path / "dup",
        _ct_like((4, 32, 32)),
        "1.2.826.0.1.3680043.2.1125.304",
        z_positions=[0, 2.5, 2.5, 5],
    )
    return tmp_path / "dup"


def _truncated_nifti(tmp_path: Path) -> Path:
    return _truncate_copy(NIFTI_SMALL, tmp_path / "cut.nii.gz")


def _truncated_uncompressed_nifti(tmp_path: Path) -> Path:
    full = _write_image(tmp_path / "full.nii", _ct_like())
    return _truncate_copy(full, tmp_path / "cut.nii")


def _truncated_mha(tmp_path: Path) -> Path:
    full = _write_image(tmp_path / "full.mha", _ct_like())
    return _truncate_copy(full, tmp_path / "cut.mha")


def _truncated_dicom(tmp_path: Path) -> Path:
    return _truncate_copy(SMALL_SLICE, tmp_path / "cut.dcm")


def _text_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.mha"
    path.write_text("not an image")
    return path


def _empty_folder(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def _with_nan(tmp_path: Path) -> Path:
    array = _ct_like().astype(np.float32)
    array[1, 2, 3] = np.nan
    return _write_image(tmp_path / "nan.nrrd", array)


def _with_inf(tmp_path: Path) -> Path:
    array = _ct_like().astype(np.float32)
    array[0, 0, 0] = np.inf
    return _write_image(tmp_path / "inf.mha", array)


REFUSALS: list[tuple[str, Callable[[Path], Path], type[Exception], str]] = [
    ("MR series folder", _mr_series, NotCTError, "modality is MR"),
    ("PET single file", _mr_single_file, NotCTError, "modality is PT"),
    (
        "uint8 volume",
        lambda d: _write_image(d / "u8.nrrd", np.full((4, 32, 32), 7, np.uint8)),
        NotCTError,
        "8-bit",
    ),
    (
        "greyscale values 0..255",
        lambda d: _write_image(d / "grey.nii.gz", np.linspace(0, 255, 4 * 32 * 32).reshape(4, 32, 32)),
        NotCTError,
        "0..255",
    ),
    ("PNG picture", lambda d: _write_image(d / "pic.png", np.zeros((32, 32), np.uint8)), VolumeError, "2-D"),
    (
        "RGB volume",
        lambda d: _write_image(d / "rgb.nrrd", np.zeros((4, 32, 32, 3), np.int16), is_vector=True),
        VolumeError,
        "RGB",
    ),
    ("2-D image", lambda d: _write_image(d / "flat.nrrd", _ct_like()[0]), VolumeError, "2-D"),
    (
        "4-D image",
        lambda d: _write_image(d / "time.nii.gz", np.stack([_ct_like(), _ct_like()])),
        VolumeError,
        "4-D",
    ),
    ("NaN voxel", _with_nan, VolumeError, "1 voxel"),
    ("infinite voxel", _with_inf, VolumeError, "NaN or infinite"),
    ("tiny slices", lambda d: _write_image(d / "tiny.nrrd", _ct_like((4, 8, 8))), VolumeError, "too small"),
    (
        "constant volume",
        lambda d: _write_image(d / "flat.mha", np.full((4, 32, 32), -1000, np.int16)),
        VolumeError,
        "same value",
    ),
    ("series with a missing slice", _series_with_a_gap, VolumeError, "unevenly spaced"),
    ("series with a duplicated slice", _series_with_a_duplicate, VolumeError, "same position"),
    ("truncated NIfTI.gz", _truncated_nifti, UnreadableVolumeError, "truncated"),
    ("truncated NIfTI", _truncated_uncompressed_nifti, UnreadableVolumeError, "truncated"),
    ("truncated MetaImage", _truncated_mha, UnreadableVolumeError, "not read completely"),
    ("truncated DICOM", _truncated_dicom, UnreadableVolumeError, "cannot be read"),
    ("text file", _text_file, UnreadableVolumeError, "cannot be read"),
    ("empty folder", _empty_folder, UnreadableVolumeError, "no DICOM series"),
    ("missing path", lambda d: d / "nowhere.nii.gz", UnreadableVolumeError, "no such file"),
]


@pytest.mark.parametrize(
    ("make", "error", "fragment"), [case[1:] for case in REFUSALS], ids=[case[0] for case in REFUSALS]
)
def test_refuses_a_bad_input_with_a_typed_error_naming_the_file(tmp_path, make, error, fragment):
    path = make(tmp_path)
    with pytest.raises(error, match=fragment) as caught:
        read_volume(path)
    assert str(path) in str(caught.value)


def test_reading_a_broken_file_prints_nothing_on_stderr(tmp_path, capfd):
    with pytest.raises(UnreadableVolumeError):
        read_volume(_truncated_mha(tmp_path))
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize(
    ("shape_zyx", "spacing_xyz", "fragment"),
    [
        ((0, 32, 32), (1.0, 1.0, 1.0), "empty"),
        ((4, 32, 32), (1.0, 0.0, 1.0), "spacing"),
        ((4, 32, 32), (1.0, 1.0, np.nan), "spacing"),
    ],
)
def test_an_empty_array_or_a_broken_spacing_is_refused(shape_zyx, spacing_xyz, fragment):
    array = _ct_like(shape_zyx).astype(np.float32)
    volume = Volume(array, spacing_xyz, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    with pytest.raises(VolumeError, match=fragment):
        validate_ct(volume)


def test_validation_can_be_skipped_for_data_known_to_be_fine(tmp_path):
    path = _write_image(tmp_path / "grey.nrrd", np.linspace(0, 255, 4 * 32 * 32).reshape(4, 32, 32))
    assert read_volume(path, validate=False).array_zyx.max() == pytest.approx(255)


# --- label maps ---


def test_a_label_map_on_another_grid_is_refused_with_what_differs():
    volume = read_volume(DICOM_SERIES)
    other = DATA / "totalsegmentator_abdomen" / "example_seg.nii.gz"
    with pytest.raises(VolumeError, match="not on the grid.*size.*spacing"):
        read_label_map(other, reference=volume)


def test_a_label_map_with_fractional_values_is_refused(tmp_path):
    path = _write_image(tmp_path / "soft.nrrd", np.full((4, 32, 32), 0.5, np.float32))
    with pytest.raises(VolumeError, match="whole-number"):
        read_label_map(path)


def test_a_float_label_map_with_whole_values_reads_as_integers(tmp_path):
    labels = np.zeros((4, 32, 32), np.float32)
    labels[1:3, 5:9, 5:9] = 5
    result = read_label_map(_write_image(tmp_path / "labels.nii.gz", labels))
    assert result.dtype == np.int32
    np.testing.assert_array_equal(result, labels.astype(np.int32))


# --- writing ---


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "result.nrrd"
    write_volume(read_volume(NIFTI_SMALL), target)
    before = _sha256(target)

    def write_half_then_fail(image, path, useCompression=False):  # noqa: N803 - SimpleITK's keyword
        Path(path).write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(volume_module.sitk, "WriteImage", write_half_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        write_volume(read_volume(SMALL_SLICE), target)
    assert _sha256(target) == before
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("result.png", "cannot write this format"), ("missing/result.nrrd", "does not exist")],
)
def test_writing_to_an_unsupported_name_or_missing_folder_is_refused(tmp_path, name, fragment):
    with pytest.raises(ConfigError, match=fragment):
        write_volume(read_volume(SMALL_SLICE), tmp_path / name)
    assert list(tmp_path.iterdir()) == []
