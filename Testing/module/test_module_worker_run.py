"""Worker runs: JSON lines become callbacks and a plain-words outcome; cancel kills a process tree."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from AnomalyScoutModuleLib.worker_run import (
    WORKER_MODES,
    RunCallbacks,
    RunRequest,
    WorkerRun,
    blocking_launcher,
    format_eta,
    kill_process_tree,
    library_root,
)


class FakeProcess:
    pid = 4242


class FakeLauncher:
    """Records the launch and lets the test play the worker's side: lines, then an exit code."""

    def __init__(self) -> None:
        self.args: list[str] | None = None
        self.cwd: str | None = None

    def __call__(self, args, cwd, on_line, on_exit):
        self.args, self.cwd, self.on_line, self.on_exit = list(args), cwd, on_line, on_exit
        return FakeProcess()

    def send(self, **message) -> None:
        self.on_line(json.dumps(message) + "\n")


class Recorder:
    """Callbacks that keep what they were told, in order."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.callbacks = RunCallbacks(
            started=lambda *a: self.events.append(("started", *a)),
            progress=lambda *a: self.events.append(("progress", *a)),
            warning=lambda *a: self.events.append(("warning", *a)),
            log=lambda *a: self.events.append(("log", *a)),
            finished=lambda outcome: self.events.append(("finished", outcome)),
        )

    def of(self, kind: str) -> list[tuple]:
        return [event[1:] for event in self.events if event[0] == kind]


@pytest.fixture
def run(tmp_path):
    launcher, recorder, killed = FakeLauncher(), Recorder(), []
    request = RunRequest(tmp_path / "ct.nrrd", tmp_path / "out", model_path=tmp_path / "m.safetensors")
    worker = WorkerRun(request, launcher, recorder.callbacks, python="python3", kill=killed.append)
    worker.start()
    return worker, launcher, recorder, killed


def test_launches_the_worker_module_with_the_score_options_from_the_library_folder(tmp_path):
    launcher = FakeLauncher()
    request = RunRequest(
        tmp_path / "ct.nrrd",
        tmp_path / "out",
        tmp_path / "m.safetensors",
        "cpu",
        "accurate",
        tmp_path / "liver.nrrd",
        threads=2,
    )
    WorkerRun(request, launcher, python="PythonSlicer").start()

    assert launcher.args[:4] == ["PythonSlicer", "-m", "AnomalyScoutLib.worker", str(tmp_path / "ct.nrrd")]
    options = dict(zip(launcher.args[4::2], launcher.args[5::2]))
    assert options == {
        "--out": str(tmp_path / "out"),
        "--mode": "accurate",
        "--device": "cpu",
        "--model": str(tmp_path / "m.safetensors"),
        "--mask": str(tmp_path / "liver.nrrd"),
        "--threads": "2",
    }
    assert (Path(launcher.cwd) / "AnomalyScoutLib" / "__init__.py").is_file()
    assert (tmp_path / "out").is_dir()


def test_the_module_offers_exactly_the_librarys_modes():
    from AnomalyScoutLib.inversion import MODES

    assert WORKER_MODES == MODES
    for mode in MODES:
        assert RunRequest(Path("ct.nrrd"), Path("out"), mode=mode).mode == mode


@pytest.mark.parametrize(("field", "value"), [("mode", "quick"), ("device", "gpu")])
def test_a_request_with_an_unknown_mode_or_device_is_refused(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        RunRequest(tmp_path / "ct.nrrd", tmp_path / "out", **{field: value})


def test_protocol_lines_become_callbacks_and_other_lines_go_to_the_log(run):
    worker, launcher, recorder, _ = run
    launcher.send(event="started", slices=4, device="cpu", mode="fast", model_id="m")
    launcher.on_line("UserWarning: something from a library\n")
    launcher.send(event="progress", i=1, n=4, slice_index=2, score=0.5, eta_s=3.0)
    launcher.send(event="progress", i=2, n=4, slice_index=0, score=0.1, eta_s=1.5, position=0.01)
    launcher.send(event="warning", message="the model has no calibration")

    assert recorder.of("started") == [(4, "cpu", "fast")]
    assert recorder.of("progress") == [(1, 4, 2, (2 + 0.5) / 4, 0.5, 3.0), (2, 4, 0, 0.01, 0.1, 1.5)]
    assert recorder.of("warning") == [("the model has no calibration",)]
    assert recorder.of("log") == [("UserWarning: something from a library",)]
    assert worker.running and not recorder.of("finished")


def test_a_finished_run_reports_its_outputs_and_flagged_slices(run):
    worker, launcher, recorder, _ = run
    launcher.send(event="started", slices=10, device="cpu", mode="fast", model_id="m")
    launcher.send(
        event="done", outputs={"residual": "/o/residual.nrrd"}, case_score=0.9, flagged_slices=[3, 4]
    )
    launcher.on_exit(0)

    (outcome,) = recorder.of("finished")[0]
    assert outcome.status == "done"
    assert outcome.outputs == {"residual": "/o/residual.nrrd"}
    assert outcome.flagged_slices == (3, 4) and outcome.case_score == 0.9
    assert "2 of 10" in outcome.message
    assert not worker.running


def test_a_worker_error_reaches_the_user_in_its_own_words(run):
    _, launcher, recorder, _ = run
    launcher.send(event="error", message="ct.nrrd is an MR image, not CT", kind="NotCTError")
    launcher.on_exit(1)

    (outcome,) = recorder.of("finished")[0]
    assert outcome.status == "failed" and outcome.exit_code == 1
    assert outcome.message == "Failed: ct.nrrd is an MR image, not CT"


def test_a_crash_without_an_error_line_is_explained_by_its_exit_code_and_last_output(run):
    _, launcher, recorder, _ = run
    launcher.on_line("Traceback (most recent call last):\n")
    launcher.on_line("ZeroDivisionError: division by zero\n")
    launcher.on_exit(3)

    (outcome,) = recorder.of("finished")[0]
    assert outcome.status == "failed"
    assert "internal error" in outcome.message and "ZeroDivisionError" in outcome.message


def test_a_worker_killed_by_the_system_is_reported_as_such(run):
    _, launcher, recorder, _ = run
    launcher.on_exit(-9)
    assert "signal 9" in recorder.of("finished")[0][0].message


def test_a_done_line_without_a_clean_exit_is_not_success(run):
    _, launcher, recorder, _ = run
    launcher.send(event="done", outputs={}, case_score=0.1, flagged_slices=[])
    launcher.on_exit(3)
    assert recorder.of("finished")[0][0].status == "failed"


def test_cancel_kills_the_process_tree_once_and_reports_a_cancelled_run(run):
    worker, launcher, recorder, killed = run
    assert worker.pid == FakeProcess.pid
    worker.cancel()
    assert killed == [FakeProcess.pid]
    launcher.on_exit(-15)

    (outcome,) = recorder.of("finished")[0]
    assert outcome.status == "cancelled"
    worker.cancel()
    assert killed == [FakeProcess.pid]


def test_a_run_starts_only_once(run):
    worker, *_ = run
    with pytest.raises(RuntimeError, match="only once"):
        worker.start()


@pytest.mark.parametrize(
    ("seconds", "text"), [(None, ""), (0.4, "0 s"), (59.6, "1 min 00 s"), (125, "2 min 05 s")]
)
def test_eta_is_written_in_minutes_and_seconds(seconds, text):
    assert format_eta(seconds) == text


def test_library_root_is_where_python_finds_the_library():
    assert (library_root() / "AnomalyScoutLib" / "worker" / "protocol.py").is_file()


def test_blocking_launcher_passes_merged_output_lines_and_the_exit_code():
    pytest.importorskip("slicer")
    lines, codes = [], []
    script = "import sys; print('out'); print('err', file=sys.stderr, flush=True); sys.exit(7)"
    blocking_launcher(
        [sys.executable, "-c", script], ".", lambda line: lines.append(line.strip()), codes.append
    )
    assert sorted(lines) == ["err", "out"] and codes == [7]


def test_kill_process_tree_ends_the_child_and_its_grandchild():
    grandchild = "import time; time.sleep(60)"
    child = "import subprocess, sys, time; "
    child += f"subprocess.Popen([sys.executable, '-c', {grandchild!r}]); time.sleep(60)"
    process = subprocess.Popen([sys.executable, "-c", child])
    parent = psutil.Process(process.pid)
    deadline = time.monotonic() + 20
    while not parent.children() and time.monotonic() < deadline:
        time.sleep(0.05)
    (grandchild_process,) = parent.children()

    kill_process_tree(process.pid, grace_s=5)

    assert process.wait(timeout=5) is not None
    assert not grandchild_process.is_running() or grandchild_process.status() == psutil.STATUS_ZOMBIE


def _staging_of_a_dead_owner(out_dir: Path) -> Path:
    """A staging folder named as AtomicOutputDir names it, for a process that has exited (its pid is free)."""
    from AnomalyScoutLib import outputs

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _, started, machine = outputs._owner()
    folder = out_dir.parent / f".{out_dir.name}.partial-{gone.pid}-{started}-{machine}-0000abcd"
    folder.mkdir(parents=True)
    (folder / "residual.nrrd").write_bytes(b"0" * 100)
    return folder


@pytest.mark.parametrize(
    ("cancel", "exit_code", "removed"), [(True, -9, True), (False, 1, True), (False, 0, False)]
)
def test_a_cancelled_or_failed_run_removes_its_dead_workers_staging_folder(run, cancel, exit_code, removed):
    worker, launcher, recorder, _ = run
    staging = _staging_of_a_dead_owner(worker.request.out_dir)
    if cancel:
        worker.cancel()
    if exit_code == 0:
        launcher.send(event="done", outputs={}, case_score=0.1, flagged_slices=[])
    launcher.on_exit(exit_code)
    assert staging.exists() is not removed
    assert any("staging folder" in line[0] for line in recorder.of("log")) is removed
