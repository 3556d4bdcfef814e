"""The atomic output folder and the streamed NRRD writer."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from AnomalyScoutLib import atomic, outputs
from AnomalyScoutLib.atomic import write_bytes_atomic
from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.outputs import AtomicOutputDir, NrrdVolumeWriter, remove_stale_staging

REPOSITORY = Path(__file__).resolve().parents[2]

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


def test_slices_written_whole_and_voxels_written_through_the_map_read_back_together(tmp_path):
    values = np.random.default_rng(1).standard_normal((6, 4, 3)).astype(np.float32)
    writer = NrrdVolumeWriter(tmp_path / "v.nrrd", values.shape, (0.7, 0.9, 2.5), (0.0, 0.0, 0.0), OBLIQUE)
    writer.write_slices(3, values[3:5])
    writer.write_slices(0, values[0:1].astype(np.float64))  # converted to float32
    writer.release_pages()
    writer.array_zyx[1:3, :, 1] = values[1:3, :, 1]  # a strided piece, as a sagittal file's batch is
    with pytest.raises(ValueError, match="do not fit"):
        writer.write_slices(5, values[:2])
    writer.close()
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "v.nrrd")))
    expected = np.zeros_like(values)
    expected[[0, 3, 4]] = values[[0, 3, 4]]
    expected[1:3, :, 1] = values[1:3, :, 1]
    np.testing.assert_array_equal(array, expected)


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


def _fail_every_file_move(monkeypatch) -> None:
    """``os.replace`` moves the first file, then fails: the crash in the middle of a file-by-file commit."""
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_a_folder_of_earlier_results_is_replaced_whole_never_mixed(tmp_path, monkeypatch, exchange):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o750)
    for name in ("a.txt", "b.txt"):
        (out / name).write_text("old")
    _fail_every_file_move(monkeypatch)
    if not exchange:
        monkeypatch.setattr(outputs, "_exchange", lambda a, b: False)
    with AtomicOutputDir(out) as staging:
        for name in ("a.txt", "b.txt"):
            (staging.staging / name).write_text("new")
        staging.commit()
    assert [(out / n).read_text() for n in ("a.txt", "b.txt")] == ["new", "new"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o750  # the folder keeps its permissions
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_folder_with_other_files_is_updated_file_by_file(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    inode = out.stat().st_ino
    with AtomicOutputDir(out) as staging:
        (staging.staging / "a.txt").write_text("new")
        staging.commit()
    assert out.stat().st_ino == inode and (out / "notes.txt").read_text() == "mine"


def test_an_output_folder_behind_a_link_is_written_through_it(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with AtomicOutputDir(tmp_path / "link") as staging:
        (staging.staging / "a.txt").write_text("new")
        staging.commit()
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "a.txt").read_text() == "new"


def _staging_of_a_killed_writer(out) -> Path:
    """Run a writer in another process, SIGKILL it mid-run and return its leftover staging folder."""
    script = (
        "import sys, time\n"
        "from AnomalyScoutLib.outputs import AtomicOutputDir\n"
        "with AtomicOutputDir(sys.argv[1]) as out:\n"
        "    (out.staging / 'residual.nrrd').write_bytes(b'0' * 1000)\n"
        "    print(out.staging, flush=True)\n"
        "    time.sleep(600)\n"
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", script, str(out)], stdout=subprocess.PIPE, text=True, cwd=REPOSITORY
    )
    staging = Path(writer.stdout.readline().strip())
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    writer.stdout.close()
    return staging


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="no SIGKILL on this system")
def test_the_next_run_removes_the_staging_folder_of_a_killed_writer_and_nothing_else(tmp_path):
    out = tmp_path / "out"
    killed = _staging_of_a_killed_writer(out)
    assert killed.is_dir() and killed.name.startswith(".out.partial-")
    pid, started, machine = outputs._owner()
    kept = [
        tmp_path / f".out.partial-{pid}-{started}-{machine}-0000abcd",  # a live owner: this process
        tmp_path / f".out.partial-1-0-{'0' * 8}-0000abcd",  # another machine's writer
        tmp_path / f".other.partial-{killed.name.split('-', 1)[1]}",  # another output's
        tmp_path / ".out.partial-k3x9_q2z",  # not made by this code (an older version's name)
    ]
    for folder in kept:
        folder.mkdir()
    with AtomicOutputDir(out) as staging:
        (staging.staging / "a.txt").write_text("new")
        staging.commit()
    assert not killed.exists()
    assert all(folder.is_dir() for folder in kept)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", *(f.name for f in kept)])


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="no SIGKILL on this system")
def test_remove_stale_staging_is_what_a_front_end_calls_after_killing_its_worker(tmp_path):
    killed = _staging_of_a_killed_writer(tmp_path / "out")
    assert remove_stale_staging(tmp_path / "out") == [killed] and not killed.exists()


def test_no_output_code_touches_the_process_umask(tmp_path, monkeypatch):
    def umask(mask):
        raise AssertionError("os.umask changes the umask of every thread of the process")

    monkeypatch.setattr(os, "umask", umask)
    with AtomicOutputDir(tmp_path / "out") as staging:
        (staging.staging / "a.txt").write_text("a")
        staging.commit()
    write_bytes_atomic(tmp_path / "file.bin", b"data")
    assert (tmp_path / "file.bin").read_bytes() == b"data"


def test_a_file_reaches_the_disk_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    events = []
    real_replace, real_fsync = os.replace, atomic.fsync_path
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", Path(b))), real_replace(a, b)))
    monkeypatch.setattr(atomic, "fsync_path", lambda p: (events.append(("fsync", Path(p))), real_fsync(p)))
    write_bytes_atomic(tmp_path / "file.bin", b"data")
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    assert events[0][1].parent == tmp_path and events[2][1] == tmp_path  # the data, then the rename
