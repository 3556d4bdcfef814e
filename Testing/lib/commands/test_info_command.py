"""``anomalyscout info``: a readable description of a CT, and one error line for a bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from AnomalyScoutLib.cli import main
from AnomalyScoutLib.io.volume import read_volume

DATA = Path(__file__).resolve().parents[2] / "Data"
NIFTI = DATA / "totalsegmentator_abdomen" / "example_ct.nii.gz"
SERIES = DATA / "dcmqi_3slice" / "ct-3slice"
SINGLE = DATA / "single_slices" / "CT_small.dcm"


@pytest.fixture
def two_series_folder(tmp_path: Path) -> Path:
    """The 3-slice series and a 1-file series (another SeriesInstanceUID) side by side."""
    folder = tmp_path / "dicom"
    shutil.copytree(SERIES, folder)
    shutil.copy(SINGLE, folder / "other.dcm")
    return folder


def test_describes_the_real_nifti(capsys):
    assert main(["info", str(NIFTI)]) == 0
    out = capsys.readouterr().out
    assert "122 x 101 x 112 voxels" in out
    assert "RAS (axis-aligned)" in out
    assert "-1207 .. 3382" in out
    assert "112 axial slices of 101 x 122" in out
    assert "0.004 (slice 0, inferior) .. 0.996 (slice 111, superior)" in out


def test_says_which_series_of_a_folder_it_read_and_honours_series(two_series_folder, capsys):
    big = read_volume(SERIES).series_uid
    assert main(["info", str(two_series_folder)]) == 0
    out = capsys.readouterr().out
    assert f"series:       {big} (the largest of 2 series" in out
    small = read_volume(SINGLE).series_uid
    assert main(["info", str(two_series_folder), "--series", small, "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["series_uid"] == small and facts["series_requested"] is True
    assert facts["size_xyz"] == [128, 128, 1]
    assert {entry["files"] for entry in facts["series_in_folder"]} == {3, 1}


def test_warns_when_one_file_of_a_larger_series_is_read(capsys):
    assert main(["info", str(SERIES / "02.dcm")]) == 0
    out = capsys.readouterr().out
    assert "one file of a 3-file series; give its folder" in out
    assert "1 axial slices of 512 x 512" in out


@pytest.mark.parametrize("content", [b"", b"plain text, not an image"])
def test_a_bad_input_gives_one_error_line_and_exit_code_1(tmp_path, capsys, content):
    path = tmp_path / "scan.nii.gz"
    path.write_bytes(content)
    assert main(["info", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0]
