"""The annotators' worklist: score a folder of cases in the background, then open them by priority.

A worklist is a CSV with at least the columns ``case, score, percentile, reason`` and one row per case, most
urgent first. Two producers write it: :class:`BatchScoring` here (the scoring worker on each case, one after
the other, ranked by case score) and ``anomalyscout rank`` (the active-learning ranking, which adds columns
such as ``slice_range``); the module reads both with :func:`read_worklist` and keeps the file's order. No qt,
no slicer: tested with plain pytest.
"""

from __future__ import annotations

import csv
import math
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from AnomalyScoutScene import read_score_report
from AnomalyScoutWorkerRun import Launcher, RunCallbacks, RunOutcome, RunRequest, WorkerRun

from AnomalyScoutLib.errors import AnomalyScoutError, ResultsError

__all__ = [
    "WORKLIST_COLUMNS",
    "BatchScoring",
    "Worklist",
    "WorklistEntry",
    "case_name",
    "find_cases",
    "read_worklist",
    "write_worklist",
]

WORKLIST_COLUMNS = ("case", "score", "percentile", "reason")
VOLUME_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha", ".mhd")
WORKLIST_FILE = "worklist.csv"


@dataclass(frozen=True)
class WorklistEntry:
    """One case of a worklist; ``extra`` keeps the producer's other columns (e.g. rank's ``slice_range``)."""

    case: str
    score: float
    percentile: float
    reason: str
    extra: dict[str, str] = field(default_factory=dict)


def case_name(path: str | Path) -> str:
    """A case's results-folder name: the file name without its volume suffix (``a.nii.gz`` -> ``a``)."""
    name = Path(path).name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_cases(folder: str | Path) -> list[Path]:
    """The volumes in ``folder``: image files, and sub-folders holding a DICOM series, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AnomalyScoutError(f"the case folder {folder} does not exist")
    cases = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name.lower().endswith(VOLUME_SUFFIXES):
            cases.append(path)
        elif path.is_dir() and any(p.suffix.lower() == ".dcm" for p in path.iterdir()):
            cases.append(path)
    return cases


def _float(text: str) -> float:
    return float(text) if text.strip() else math.nan


def read_worklist(path: str | Path) -> list[WorklistEntry]:
    """Read a worklist CSV in file order (its producer ranked it).

    Raises:
        ResultsError: the file is missing or lacks one of :data:`WORKLIST_COLUMNS`.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as stream:
            reader = csv.DictReader(stream)
            missing = [c for c in WORKLIST_COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise ResultsError(f"{path} is not a worklist: it has no column {', '.join(missing)}")
            return [
                WorklistEntry(
                    case=row["case"],
                    score=_float(row["score"]),
                    percentile=_float(row["percentile"]),
                    reason=row["reason"],
                    extra={k: v for k, v in row.items() if k not in WORKLIST_COLUMNS},
                )
                for row in reader
            ]
    except FileNotFoundError as error:
        raise ResultsError(f"no worklist at {path}") from error
    except ValueError as error:
        raise ResultsError(f"{path} has a score that is not a number ({error})") from error


def write_worklist(entries: Sequence[WorklistEntry], path: str | Path) -> None:
    """Write ``entries`` in their order, atomically (a temporary file renamed over ``path``)."""
    path = Path(path)
    extra_columns = sorted({k for entry in entries for k in entry.extra})
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow([*WORKLIST_COLUMNS, *extra_columns])
            for entry in entries:
                numbers = ["" if math.isnan(v) else f"{v:.6g}" for v in (entry.score, entry.percentile)]
                writer.writerow(
                    [entry.case, *numbers, entry.reason, *(entry.extra.get(c, "") for c in extra_columns)]
                )
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def entry_from_results(case: str | Path, out_dir: str | Path) -> WorklistEntry:
    """A worklist row from a finished run: case score, case percentile, and why it deserves a look."""
    report = read_score_report(out_dir)
    flagged = report.flagged_slices
    if flagged:
        top = flagged[0]
        reason = (
            f"{len(flagged)} flagged slice(s); strongest: slice {top.slice_index} (score {top.score:.3g})"
        )
    else:
        reason = "no flagged slice"
    return WorklistEntry(
        str(case), report.case_score, report.case_percentile, reason, extra={"results": str(Path(out_dir))}
    )


class Worklist:
    """The cases in priority order and which ones were already opened ("Load next case" skips those)."""

    def __init__(self, entries: Sequence[WorklistEntry]) -> None:
        self.entries = list(entries)
        self.opened: set[str] = set()

    def next_entry(self) -> WorklistEntry | None:
        """The most urgent case not opened yet, now marked as opened; ``None`` at the end of the list."""
        for entry in self.entries:
            if entry.case not in self.opened:
                self.opened.add(entry.case)
                return entry
        return None


@dataclass
class BatchProgress:
    """Callbacks of a batch; ``case_finished`` gets each case and its outcome (failed ones are skipped)."""

    case_started: Callable[[int, int, Path], None] = lambda i, n, case: None
    case_finished: Callable[[Path, RunOutcome], None] = lambda case, outcome: None
    finished: Callable[[list[WorklistEntry]], None] = lambda entries: None


class BatchScoring:
    """Scores cases one after the other with the worker, then writes ``worklist.csv`` ranked by case score.

    One worker at a time: a worker already uses every core (or the GPU). A failed case is reported and
    skipped, never aborting the batch.

    Args:
        cases: the volumes to score.
        out_root: results go to ``out_root/<case name>/``, the worklist to ``out_root/worklist.csv``.
        launcher: how each worker starts (non-blocking in the GUI: the next case starts when one exits).
        python: the interpreter running the worker (see :class:`WorkerRun`).
        options: ``RunRequest`` options shared by all cases (model, device, mode).
    """

    def __init__(
        self,
        cases: Sequence[Path],
        out_root: Path,
        launcher: Launcher,
        progress: BatchProgress | None = None,
        *,
        python: str | None = None,
        **options,
    ) -> None:
        if not cases:
            raise AnomalyScoutError(
                "the folder holds no CT volume (NRRD, NIfTI, MHA or a DICOM series folder)"
            )
        names = [case_name(case) for case in cases]
        if len(set(names)) != len(names):
            raise AnomalyScoutError("two cases share a name; their results would overwrite each other")
        self.cases = list(cases)
        self.out_root = Path(out_root)
        self.progress = progress or BatchProgress()
        self._launcher = launcher
        self._python = python
        self._options = options
        self._entries: list[WorklistEntry] = []
        self._index = -1
        self._current: WorkerRun | None = None
        self._cancelled = False

    @property
    def worklist_path(self) -> Path:
        return self.out_root / WORKLIST_FILE

    def start(self) -> None:
        self.out_root.mkdir(parents=True, exist_ok=True)
        self._next()

    def cancel(self) -> None:
        """Stop the running case and start no other; no worklist is written."""
        self._cancelled = True
        if self._current is not None:
            self._current.cancel()

    def _next(self) -> None:
        self._index += 1
        if self._cancelled:
            return
        if self._index == len(self.cases):
            self._entries.sort(key=lambda e: -e.score if math.isfinite(e.score) else math.inf)
            write_worklist(self._entries, self.worklist_path)
            self.progress.finished(self._entries)
            return
        case = self.cases[self._index]
        out_dir = self.out_root / _safe(case_name(case))
        self.progress.case_started(self._index + 1, len(self.cases), case)
        request = RunRequest(case, out_dir, **self._options)
        callbacks = RunCallbacks(finished=lambda outcome: self._on_case(case, outcome))
        self._current = WorkerRun(request, self._launcher, callbacks, python=self._python)
        self._current.start()

    def _on_case(self, case: Path, outcome: RunOutcome) -> None:
        if outcome.status == "done":
            try:
                self._entries.append(entry_from_results(case, self._current.request.out_dir))
            except ResultsError as error:
                outcome = RunOutcome("failed", f"Failed: {error}", outcome.exit_code)
        self.progress.case_finished(case, outcome)
        self._next()


def _safe(name: str) -> str:
    """A folder name without characters some file systems refuse."""
    return re.sub(r"[^\w.-]+", "_", name) or "case"
