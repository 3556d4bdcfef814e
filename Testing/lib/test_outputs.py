"""The atomic output folder and the streamed NRRD writer."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import SimpleITK as sitk

from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.outputs import AtomicOutputDir, NrrdVolumeWriter

OBLIQUE = (0.0, 0.6, 0.8, 1.0, 0.0, 0.0, 0.0, 0.8, -0.6)


def test_a_streamed_nrrd_reads_back_with_its_exact_grid_and_values(tmp_path):
    values = np.random.default_rng(0).standard_normal((5, 4, 3)).astype(np.float32)
    writer = NrrdVolumeWriter(
        tmp_path / "v.nrrd", values.shape, (0.7, 0.9, 2.5), (-10.25, 3.0, 100.125), OBLIQUE
    )
    writer.array_zyx[:2] = values[:2]
    writer.release_pages()
    writer.array_zyx[2:4] = values[2:4]  # slice 4 is never written: it must read back as zeros
    writer.close()
    image = sitk.ReadImage(str(tmp_path / "v.nrrd"))
    assert image.GetSize() == (3, 4, 5)
    np.testing.assert_allclose(image.GetSpacing(), (0.7, 0.9, 2.5), atol=1e-12)
    np.testing.assert_allclose(image.GetOrigin(), (-10.25, 3.0, 100.125), atol=1e-12)
    np.testing.assert_allclose(image.GetDirection(), OBLIQUE, atol=1e-12)
    array = sitk.GetArrayFromImage(image)
    np.testing.assert_array_equal(array[:4], values[:4])
    assert not array[4].any()


def test_committed_files_replace_old_ones_and_leave_others_alone(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "scores.csv").write_text("old")
    (out / "notes.txt").write_text("mine")
    with AtomicOutputDir(out) as staging:
        (staging.staging / "scores.csv").write_text("new")
        written = staging.commit()
    assert written == {"scores.csv": out / "scores.csv"}
    assert (out / "scores.csv").read_text() == "new" and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_run_leaves_the_folder_as_it_was_and_no_temporary_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "scores.csv").write_text("old")
    with pytest.raises(RuntimeError), AtomicOutputDir(out) as staging:
        (staging.staging / "scores.csv").write_text("half")
        raise RuntimeError("boom")
    assert (out / "scores.csv").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_new_folder_appears_only_on_commit(tmp_path):
    out = tmp_path / "deep" / "out"
    with AtomicOutputDir(out) as staging:
        (staging.staging / "a.txt").write_text("a")
        assert not out.exists()
        staging.commit()
    assert (out / "a.txt").read_text() == "a"


def test_refuses_an_output_path_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a folder"), AtomicOutputDir(tmp_path / "file"):
        pass


def test_a_new_folder_gets_the_usual_permissions_not_the_private_temporary_ones(tmp_path):
    out = tmp_path / "out"
    with AtomicOutputDir(out) as staging:
        (staging.staging / "a.txt").write_text("a")
        staging.commit()
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask
