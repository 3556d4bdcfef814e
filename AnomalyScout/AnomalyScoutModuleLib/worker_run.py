"""Running the scoring worker from Slicer: launch, read its JSON lines, cancel, report in plain words.

The heavy work runs in ``python -m AnomalyScoutLib.worker`` (Slicer's own Python), a separate process, so the
GUI never freezes and a crash or an out-of-memory kill cannot take Slicer down. How the process is started is
a :class:`Launcher` (a small Protocol): inside Slicer it is :func:`slicer_launcher` (non-blocking, callbacks
on the GUI thread); in tests and batch jobs :func:`blocking_launcher`, or a fake that feeds lines by hand.
This file imports neither ``qt`` nor ``slicer`` at module level, so it is tested with plain pytest.
"""

from __future__ import annotations

import codecs
import dataclasses
import importlib.util
import inspect
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from AnomalyScoutLib.errors import AnomalyScoutError
from AnomalyScoutLib.worker.protocol import parse_event

__all__ = [
    "Launcher",
    "ProcessHandle",
    "RunCallbacks",
    "RunOutcome",
    "RunRequest",
    "WORKER_MODES",
    "WorkerRun",
    "WorkerStartError",
    "blocking_launcher",
    "format_eta",
    "kill_process_tree",
    "library_root",
    "python_executable",
    "slicer_launcher",
]

#: Exit codes of the worker (``docs/design.md``) and what they mean to the person who pressed Apply.
EXIT_MEANINGS = {
    1: "the input or the model cannot be used",
    2: "the worker did not accept its options (a bug in the module)",
    3: "an internal error in AnomalyScout (a bug; the log shows the details)",
    130: "the run was cancelled",
}
#: The library's reconstruction modes (``AnomalyScoutLib.inversion.MODES``, which imports torch: the module
#: cannot import it at load time; a test keeps the two the same).
WORKER_MODES = ("fast", "accurate", "projector", "denoise")
#: Seconds a worker gets to clean up its temporary files after SIGTERM before it is killed.
TERMINATE_GRACE_S = 3.0
#: Log lines kept to explain a worker that died without an ``error`` message.
LOG_TAIL_LINES = 20


class WorkerStartError(AnomalyScoutError):
    """The worker cannot be started: no Python that has Slicer's packages was found."""


class ProcessHandle(Protocol):
    """What a run needs of a started process: its id, to kill it and its children."""

    pid: int


class Launcher(Protocol):
    """Starts ``args`` in ``cwd``; calls ``on_line`` per output line and ``on_exit`` with the exit code."""

    def __call__(
        self, args: Sequence[str], cwd: str, on_line: Callable[[str], None], on_exit: Callable[[int], None]
    ) -> ProcessHandle: ...


@dataclass(frozen=True)
class RunRequest:
    """One worker run: the exported CT, where the outputs go and the options of ``anomalyscout score``.

    With ``review_path`` (a label map on the CT's grid) the worker reviews that segmentation instead of
    scoring the whole CT (``--review``, the outputs of ``anomalyscout review``); ``mask_path`` is for scoring
    only, since a review scores its own region around the segmentation.
    """

    input_path: Path
    out_dir: Path
    model_path: Path | None = None
    device: str = "auto"
    mode: str = "fast"
    mask_path: Path | None = None
    threads: int | None = None
    review_path: Path | None = None

    def __post_init__(self) -> None:
        if self.mode not in WORKER_MODES:
            raise ValueError(f"mode must be one of {', '.join(WORKER_MODES)}, not {self.mode!r}")
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu, cuda[:N] or mps, not {self.device!r}")
        if self.mask_path is not None and self.review_path is not None:
            raise ValueError("a review scores its own region around the segmentation: no mask_path with it")

    def arguments(self, python: str) -> list[str]:
        """The worker's command line (the same options as ``anomalyscout score``, or ``--review``)."""
        args = [python, "-m", "AnomalyScoutLib.worker", str(self.input_path), "--out", str(self.out_dir)]
        args += ["--mode", self.mode, "--device", self.device]
        if self.model_path is not None:
            args += ["--model", str(self.model_path)]
        if self.mask_path is not None:
            args += ["--mask", str(self.mask_path)]
        if self.review_path is not None:
            args += ["--review", str(self.review_path)]
        if self.threads is not None:
            args += ["--threads", str(self.threads)]
        return args


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: ``status`` is "done", "failed" or "cancelled"; ``message`` is for the user."""

    status: str
    message: str
    exit_code: int
    outputs: dict[str, str] = field(default_factory=dict)
    case_score: float | None = None
    flagged_slices: tuple[int, ...] = ()
    elapsed_s: float | None = None
    """Seconds from :meth:`WorkerRun.start` to the worker's exit (what the status line reports)."""


def _ignore(*_args: Any) -> None:
    """Default for callbacks nobody listens to."""


@dataclass
class RunCallbacks:
    """What the GUI (or a batch job) wants to hear; every callback is optional."""

    started: Callable[[int, str, str], None] = _ignore  # (n slices, device, mode)
    progress: Callable[[int, int, int, float, float | None, float | None], None] = _ignore
    """(i, n, slice_index, position, score, eta_s); ``position`` is the relative slice position in [0, 1]."""
    warning: Callable[[str], None] = _ignore
    log: Callable[[str], None] = (
        _ignore  # lines that are not protocol messages (library warnings, tracebacks)
    )
    finished: Callable[[RunOutcome], None] = _ignore


class WorkerRun:
    """One worker process from start to finish.

    Args:
        request: what to score and how.
        launcher: how to start the process (:func:`slicer_launcher` in the GUI).
        callbacks: where events go.
        python: the interpreter that runs the worker (Slicer's ``PythonSlicer`` by default).
        kill: how a cancel ends the process tree (:func:`kill_process_tree`; replaced in tests).
        clock: seconds for the elapsed time (``time.monotonic``; replaced in tests).

    Raises:
        WorkerStartError: no ``python`` was given and no ``PythonSlicer`` was found.
    """

    def __init__(
        self,
        request: RunRequest,
        launcher: Launcher,
        callbacks: RunCallbacks | None = None,
        *,
        python: str | None = None,
        kill: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.request = request
        self.callbacks = callbacks or RunCallbacks()
        self._launcher = launcher
        self._python = python or python_executable()
        self._kill = kill or kill_process_tree
        self._clock = clock
        self._started_at: float | None = None
        self._process: ProcessHandle | None = None
        self._slices = 0
        self._done: dict[str, Any] | None = None
        self._error: dict[str, Any] | None = None
        self._log_tail: list[str] = []
        self._cancelled = False
        self.outcome: RunOutcome | None = None

    @property
    def pid(self) -> int | None:
        """The launched process's id (``None`` before :meth:`start`)."""
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self.outcome is None

    def start(self) -> None:
        """Launch the worker; returns at once with a non-blocking launcher."""
        if self._process is not None:
            raise RuntimeError("a WorkerRun is started only once; make a new one to run again")
        self.request.out_dir.mkdir(parents=True, exist_ok=True)
        args = self.request.arguments(self._python)
        self._started_at = self._clock()
        self._process = self._launcher(args, str(library_root()), self._on_line, self._on_exit)

    def cancel(self) -> None:
        """Stop the worker and all it started; its atomic outputs leave ``out_dir`` as it was."""
        if not self.running:
            return
        self._cancelled = True
        self._kill(self._process.pid)

    def _on_line(self, line: str) -> None:
        message = parse_event(line)
        if message is None:
            if line.strip():
                self._log_tail = [*self._log_tail[1 - LOG_TAIL_LINES :], line.rstrip()]
                self.callbacks.log(line.rstrip())
            return
        kind = message["event"]
        if kind == "started":
            self._slices = int(message["slices"])
            self.callbacks.started(self._slices, str(message.get("device", "")), str(message.get("mode", "")))
        elif kind == "progress":
            n = int(message["n"])
            slice_index = int(message["slice_index"])
            position = message.get("position")
            position = (
                (slice_index + 0.5) / max(self._slices or n, 1) if position is None else float(position)
            )
            self.callbacks.progress(
                int(message["i"]), n, slice_index, position, message.get("score"), message.get("eta_s")
            )
        elif kind == "warning":
            self.callbacks.warning(str(message["message"]))
        elif kind == "done":
            self._done = message
        else:
            self._error = message

    def _on_exit(self, exit_code: int) -> None:
        elapsed = None if self._started_at is None else self._clock() - self._started_at
        self.outcome = dataclasses.replace(self._outcome(exit_code), elapsed_s=elapsed)
        if self.outcome.status != "done":
            self._remove_staging()
        self.callbacks.finished(self.outcome)

    def _remove_staging(self) -> None:
        """A killed worker cannot delete its hidden staging folder (hundreds of MB for a large CT): do it
        here, now that it has been reaped. Only folders of this output whose owner is gone are touched."""
        try:
            from AnomalyScoutLib.outputs import remove_stale_staging  # needs psutil: after the install offer

            removed = remove_stale_staging(self.request.out_dir)
        except (ImportError, OSError) as error:
            self.callbacks.log(f"could not remove the cancelled run's staging folder: {error}")
            return
        for folder in removed:
            self.callbacks.log(f"removed the cancelled run's staging folder {folder.name}")

    def _outcome(self, exit_code: int) -> RunOutcome:
        if self._cancelled or exit_code == 130 or (self._error or {}).get("kind") == "CancelledError":
            return RunOutcome("cancelled", "Cancelled: nothing was written.", exit_code)
        if exit_code == 0 and self._done is not None:
            flagged = tuple(int(k) for k in self._done.get("flagged_slices", ()))
            return RunOutcome(
                "done",
                f"Done: {len(flagged)} of {self._slices} slices flagged.",
                exit_code,
                outputs=dict(self._done.get("outputs", {})),
                case_score=self._done.get("case_score"),
                flagged_slices=flagged,
            )
        return RunOutcome("failed", self._failure_message(exit_code), exit_code)

    def _failure_message(self, exit_code: int) -> str:
        if self._error is not None:
            return f"Failed: {self._error.get('message', 'no message')}"
        if exit_code < 0:
            meaning = f"the worker was stopped by signal {-exit_code} (out of memory?)"
        else:
            meaning = EXIT_MEANINGS.get(exit_code, f"the worker stopped with exit code {exit_code}")
        last = f" Last output: {self._log_tail[-1]}" if self._log_tail else ""
        return f"Failed: {meaning}.{last}"


def format_eta(seconds: float | None) -> str:
    """``"1 min 05 s"``-style text for the progress bar; empty while no estimate exists."""
    if seconds is None:
        return ""
    total = max(0, round(seconds))
    minutes, secs = divmod(total, 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def kill_process_tree(pid: int, grace_s: float = TERMINATE_GRACE_S) -> None:
    """SIGTERM the process and all its descendants, then SIGKILL whatever is still alive after ``grace_s``.

    Killing only the launched process would leave its Python child scoring on; SIGTERM first lets the worker
    delete its temporary output folder.
    """
    import psutil  # here, not at the top: the module must load before the dependency check installs psutil

    try:
        parent = psutil.Process(pid)
        processes = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def library_root() -> Path:
    """The folder holding ``AnomalyScoutLib``: the worker's working directory, so ``-m`` finds the library.

    Inside Slicer that is the extension's scripted-modules folder; in a source checkout, the repository root.
    """
    spec = importlib.util.find_spec("AnomalyScoutLib")
    if spec is None or spec.origin is None:
        raise RuntimeError("AnomalyScoutLib is not importable: the extension is not installed completely")
    return Path(spec.origin).resolve().parent.parent


def python_executable(
    which: Callable[[str], str | None] = shutil.which, executable: str = sys.executable
) -> str:
    """The interpreter for the worker: Slicer's ``PythonSlicer``, or this process when it is a Python.

    Inside the Slicer application ``sys.executable`` is the Slicer binary itself (``SlicerApp-real``), which
    would start a second Slicer instead of running the worker; so ``PythonSlicer`` is looked up on ``PATH``
    (the launcher puts Slicer's ``bin`` there, as SlicerTotalSegmentator and MONAIAuto3DSeg rely on) and
    next to the executable. Outside the application (PythonSlicer itself, pytest) ``sys.executable`` is a
    Python that has the packages.

    Raises:
        WorkerStartError: neither is found.
    """
    found = which("PythonSlicer")
    if found:
        return found
    binary = Path(executable)
    sibling = binary.with_name("PythonSlicer" + binary.suffix)
    if sibling.is_file():
        return str(sibling)
    if binary.name.lower().startswith("python"):
        return executable
    raise WorkerStartError(
        f"PythonSlicer was not found on PATH nor next to {binary.name}: start Slicer with its launcher"
    )


def blocking_launcher(
    args: Sequence[str], cwd: str, on_line: Callable[[str], None], on_exit: Callable[[int], None]
) -> ProcessHandle:
    """Run to completion in this thread, through ``slicer.util.launchConsoleProcess`` (tests, batch jobs).

    Inside Slicer the worker gets Slicer's startup environment (as in non-blocking mode); outside the
    application (slicer-core) there is none, so this process's environment is passed on.
    """
    import slicer
    import slicer.util

    in_app = hasattr(slicer, "app")
    process = slicer.util.launchConsoleProcess(list(args), useStartupEnvironment=in_app, cwd=cwd)
    for line in process.stdout:
        on_line(line)
    on_exit(process.wait())
    return process


def slicer_launcher(
    args: Sequence[str], cwd: str, on_line: Callable[[str], None], on_exit: Callable[[int], None]
) -> ProcessHandle:
    """Start without blocking the GUI: ``launchConsoleProcess(blocking=False)`` (Slicer 5.13) or QProcess."""
    import slicer.util

    if "blocking" in inspect.signature(slicer.util.launchConsoleProcess).parameters:
        return slicer.util.launchConsoleProcess(
            list(args), cwd=cwd, blocking=False, logCallback=on_line, completedCallback=on_exit
        )
    return _QProcessHandle(args, cwd, on_line, on_exit)


class _QProcessHandle:
    """The fallback for Slicer before 5.13: a QProcess whose merged output arrives through Qt signals."""

    def __init__(
        self, args: Sequence[str], cwd: str, on_line: Callable[[str], None], on_exit: Callable[[int], None]
    ) -> None:
        import qt
        import slicer.util

        self._on_line = on_line
        self._pending = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")  # a read may split a character
        self._process = qt.QProcess()
        self._process.setProcessChannelMode(qt.QProcess.MergedChannels)
        self._process.setWorkingDirectory(cwd)
        environment = qt.QProcessEnvironment()
        for key, value in slicer.util.startupEnvironment().items():  # as launchConsoleProcess does
            environment.insert(key, value)
        self._process.setProcessEnvironment(environment)
        self._process.connect("readyReadStandardOutput()", self._read)
        self._process.connect(
            "finished(int,QProcess::ExitStatus)", lambda code, _status: self._finish(code, on_exit)
        )
        self._process.start(args[0], list(args[1:]))
        self.pid = int(self._process.processId())

    def _read(self) -> None:
        # PythonQt's QByteArray has no buffer protocol (bytes() of it fails): .data() gives the bytes.
        self._pending += self._decoder.decode(self._process.readAllStandardOutput().data())
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._on_line(line)

    def _finish(self, exit_code: int, on_exit: Callable[[int], None]) -> None:
        self._read()
        if self._pending:
            self._on_line(self._pending)
        on_exit(exit_code)
