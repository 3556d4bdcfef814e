"""Run folders: a run's folder lives while its results are shown, and no longer."""

from __future__ import annotations

from AnomalyScoutModuleLib.run_folders import RunFolders


def test_newer_results_of_the_same_input_remove_the_older_folder_only(tmp_path):
    folders = RunFolders(tmp_path / "temp")
    first, second, other = folders.create(), folders.create(), folders.create()
    folders.keep("vtkMRMLScalarVolumeNode1", first)
    folders.keep("vtkMRMLScalarVolumeNode2", other)
    folders.keep("vtkMRMLScalarVolumeNode1", second)
    assert not first.exists() and second.is_dir() and other.is_dir()
    assert sorted(folders.kept) == sorted([second, other])


def test_clear_removes_every_kept_folder(tmp_path):
    folders = RunFolders(tmp_path)
    kept = folders.create()
    (kept / "results").mkdir()
    folders.keep("a", kept)
    folders.clear()
    assert not kept.exists() and folders.kept == []


def test_discard_removes_a_run_that_did_not_finish(tmp_path):
    folder = RunFolders(tmp_path).create()
    (folder / "input.nrrd").write_bytes(b"x")
    RunFolders.discard(folder)
    assert not folder.exists()
