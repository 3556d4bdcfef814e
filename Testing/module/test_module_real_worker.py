"""The module's run logic and scene logic on REAL worker outputs (``python -m AnomalyScoutLib.worker``).

The session fixture ``real_run`` launches the worker once, in blocking mode through
``slicer.util.launchConsoleProcess`` (``useStartupEnvironment=False``), on a tiny phantom with a liver tumour.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import psutil
import pytest
import vtk
from AnomalyScoutModuleLib.scene import SceneResults, read_score_report
from AnomalyScoutModuleLib.worker_run import RunCallbacks, RunRequest, WorkerRun, blocking_launcher
from module_helpers import load_volume_node

slicer = pytest.importorskip("slicer")


def _column(table, name):
    return slicer.util.arrayFromTableColumn(table, name).copy()


def test_the_worker_reports_its_start_every_slice_and_its_outputs(real_run):
    n = real_run.phantom.volume.array_zyx.shape[0]
    assert real_run.outcome.status == "done", real_run.outcome.message
    started = [e for e in real_run.events if e[0] == "started"]
    progress = [e for e in real_run.events if e[0] == "progress"]
    assert started == [("started", n, "cpu", "fast")]
    assert [e[1] for e in progress] == list(range(1, n + 1))
    assert sorted(e[3] for e in progress) == list(range(n))
    assert all(0 < e[4] < 1 for e in progress)
    for name in ("residual.nrrd", "reconstruction.nrrd", "scores.csv", "scores.json"):
        assert (real_run.out_dir / name).is_file()


def test_live_scores_are_the_final_scores_of_the_same_slices(real_run):
    final = {s.slice_index: s.score for s in read_score_report(real_run.out_dir).slices}
    live = {e[3]: e[5] for e in real_run.events if e[0] == "progress"}
    assert live.keys() == final.keys()
    assert [live[k] for k in sorted(live)] == pytest.approx([final[k] for k in sorted(final)], rel=1e-4)


def test_real_results_sit_on_the_ct_grid_and_fill_the_tables(scene, real_run):
    ct = load_volume_node(scene, real_run.ct_path, "phantom")
    data = json.loads((real_run.out_dir / "scores.json").read_text())

    nodes = SceneResults(scene).show_results(ct, real_run.out_dir, with_reconstruction=True)

    for volume in (nodes.residual, nodes.reconstruction):
        assert volume.GetImageData().GetDimensions() == ct.GetImageData().GetDimensions()
        a, b = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(a)
        ct.GetIJKToRASMatrix(b)
        assert slicer.util.arrayFromVTKMatrix(a) == pytest.approx(slicer.util.arrayFromVTKMatrix(b))
    assert _column(nodes.table, "slice_index") == pytest.approx(
        sorted(s["slice_index"] for s in data["slices"])
    )
    assert _column(nodes.table, "score") == pytest.approx(
        [s["score"] for s in sorted(data["slices"], key=lambda s: s["slice_index"])], rel=1e-6
    )
    assert nodes.flagged_table.GetNumberOfRows() == sum(s["flagged"] for s in data["slices"])
    residual = slicer.util.arrayFromVolume(nodes.residual)
    assert residual[:, :2, :2].max() == 0 < residual.max()  # 0 in the air of the corners, not 0 everywhere


def test_jumping_to_a_slice_centre_lands_on_that_slice_of_the_ct(scene, real_run, red_slice_logic):
    ct = load_volume_node(scene, real_run.ct_path, "phantom")
    results = SceneResults(scene)
    nodes = results.show_results(ct, real_run.out_dir)
    target = real_run.phantom.anomalies[0].slices[0]  # a slice with the tumour
    row = int(np.flatnonzero(_column(nodes.table, "slice_index") == target)[0])

    results.jump_to_slice(results.center_of_row(nodes.table, row))

    ras_to_ijk = vtk.vtkMatrix4x4()
    ct.GetRASToIJKMatrix(ras_to_ijk)
    offset = red_slice_logic.GetSliceOffset()
    centre_ijk = ras_to_ijk.MultiplyPoint((0.0, 0.0, offset, 1.0))
    # the phantom is in canonical order with an identity direction: canonical slice k is the file's z index k
    assert centre_ijk[2] == pytest.approx(target)


def test_an_unreadable_input_fails_in_plain_words_and_writes_nothing(tmp_path, real_run):
    bad = tmp_path / "not_a_ct.nrrd"
    bad.write_text("this is not an image")
    outcomes = []
    request = RunRequest(bad, tmp_path / "out", real_run.model_path, device="cpu", threads=1)
    WorkerRun(
        request, blocking_launcher, RunCallbacks(finished=outcomes.append), python=sys.executable
    ).start()

    (outcome,) = outcomes
    assert outcome.status == "failed" and outcome.exit_code == 1
    assert "not_a_ct.nrrd" in outcome.message and "Traceback" not in outcome.message
    assert list((tmp_path / "out").iterdir()) == []


def _threaded_launcher(args, cwd, on_line, on_exit):
    """Like Slicer's non-blocking launchConsoleProcess (which needs Qt): a thread feeds the callbacks."""
    process = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def pump() -> None:
        for line in process.stdout:
            on_line(line)
        on_exit(process.wait())

    threading.Thread(target=pump, daemon=True).start()
    return process


def test_cancelling_a_running_worker_stops_it_and_leaves_no_output(tmp_path, real_run):
    started, finished = threading.Event(), threading.Event()
    outcomes = []

    def done(outcome) -> None:
        outcomes.append(outcome)
        finished.set()

    callbacks = RunCallbacks(started=lambda *a: started.set(), finished=done)
    # projector mode: 1000 optimisation steps per batch, so the worker is surely still busy when cancelled
    request = RunRequest(
        real_run.ct_path, tmp_path / "out", real_run.model_path, device="cpu", mode="projector", threads=1
    )
    run = WorkerRun(request, _threaded_launcher, callbacks, python=sys.executable)
    run.start()
    assert started.wait(120), "the worker never started"

    run.cancel()

    assert finished.wait(30)
    assert outcomes[0].status == "cancelled"
    assert list((tmp_path / "out").iterdir()) == []
    assert not psutil.pid_exists(run.pid) or psutil.Process(run.pid).status() == psutil.STATUS_ZOMBIE
