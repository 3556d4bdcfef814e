"""The annotators' worklist: score a folder of cases in the background, then open them by priority.

A worklist is the CSV that ``anomalyscout rank`` writes (``AnomalyScoutLib.active.ranking``: ``rank, case,
slice_start, slice_end, score, percentile, reason``, most urgent first). :class:`BatchScoring` here writes the
same file with the same library function after scoring a folder with the worker, one case after the other, and
keeps each case's heatmap so that "Load next case" opens it with its results. :func:`read_worklist` needs only
``case, score, percentile, reason`` and keeps the file's order. No qt, no slicer: tested with plain pytest.

``AnomalyScoutLib.active`` is imported only when a batch writes its worklist: its package pulls in tqdm,
which Slicer does not bundle, and this file is imported when Slicer loads the module.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from AnomalyScoutLib.errors import AnomalyScoutError, ResultsError
from AnomalyScoutModuleLib.csv_files import read_csv_rows
from AnomalyScoutModuleLib.scene import ScoreReport, read_score_report
from AnomalyScoutModuleLib.worker_run import Launcher, RunCallbacks, RunOutcome, RunRequest, WorkerRun

__all__ = [
    "WORKLIST_COLUMNS",
    "BatchScoring",
    "Worklist",
    "WorklistEntry",
    "case_name",
    "find_cases",
    "read_worklist",
    "results_dir",
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
    rows = read_csv_rows(path, WORKLIST_COLUMNS, "worklist")
    try:
        return [
            WorklistEntry(
                case=row["case"],
                score=_float(row["score"]),
                percentile=_float(row["percentile"]),
                reason=row["reason"],
                extra={k: v for k, v in row.items() if k not in WORKLIST_COLUMNS},
            )
            for row in rows
        ]
    except ValueError as error:
        raise ResultsError(f"{path} has a score that is not a number ({error})") from error


def results_dir(out_root: str | Path, case: str | Path) -> Path:
    """Where a batch keeps a case's outputs: ``out_root/<case name>`` (one convention, writer and reader)."""
    return Path(out_root) / (re.sub(r"[^\w.-]+", "_", case_name(case)) or "case")


def _reason(report: ScoreReport) -> str:
    """Why a case deserves a look, in words: its flagged slices and the strongest one."""
    flagged = report.flagged_slices
    if not flagged:
        return "no flagged slice"
    top = flagged[0]
    return f"{len(flagged)} flagged slice(s); strongest: slice {top.slice_index} (score {top.score:.3g})"


class Worklist:
    """The worklist's rows in priority order and which were opened ("Load next case" skips those).

    Rows, not case names, are tracked: a slice-level worklist from ``anomalyscout rank`` lists a case once per
    slice range.
    """

    def __init__(self, entries: Sequence[WorklistEntry]) -> None:
        self.entries = list(entries)
        self.opened: set[int] = set()
        self.current_row: int | None = None

    def next_entry(self) -> WorklistEntry | None:
        """The most urgent row not opened yet, now marked as opened (``current_row``); ``None`` at the end."""
        for row, entry in enumerate(self.entries):
            if row not in self.opened:
                self.opened.add(row)
                self.current_row = row
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

    Each row points the annotator at the case's hottest run of slices (the library's ``hot_range``, as
    ``anomalyscout rank`` does) and keeps the case's outputs in :func:`results_dir`.

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
        self._reports: list[tuple[Path, ScoreReport]] = []
        self._failed: list[dict[str, str]] = []
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
            self._write_worklist()
            self.progress.finished(read_worklist(self.worklist_path))
            return
        case = self.cases[self._index]
        out_dir = results_dir(self.out_root, case)
        self.progress.case_started(self._index + 1, len(self.cases), case)
        request = RunRequest(case, out_dir, **self._options)
        callbacks = RunCallbacks(finished=lambda outcome: self._on_case(case, outcome))
        self._current = WorkerRun(request, self._launcher, callbacks, python=self._python)
        self._current.start()

    def _on_case(self, case: Path, outcome: RunOutcome) -> None:
        if outcome.status == "done":
            try:
                self._reports.append((case, read_score_report(self._current.request.out_dir)))
            except ResultsError as error:
                outcome = RunOutcome("failed", f"Failed: {error}", outcome.exit_code)
        if outcome.status == "failed":
            self._failed.append({"case": str(case), "error": outcome.message})
        self.progress.case_finished(case, outcome)
        self._next()

    def _write_worklist(self) -> None:
        """Rank the scored cases by case score (NaN last) and write rank's CSV and JSON."""
        from AnomalyScoutLib.active.ranking import WorklistItem, hot_range, write_worklist

        ranked = sorted(
            self._reports, key=lambda cr: -cr[1].case_score if math.isfinite(cr[1].case_score) else math.inf
        )
        items = []
        for rank, (case, report) in enumerate(ranked, start=1):
            by_slice = sorted(report.slices, key=lambda s: s.slice_index)
            start, end = hot_range([s.score for s in by_slice])
            items.append(
                WorklistItem(
                    rank,
                    str(case),
                    by_slice[start].slice_index,
                    by_slice[end].slice_index,
                    report.case_score,
                    report.case_percentile,
                    _reason(report),
                )
            )
        summary = {
            "producer": "AnomalyScout Slicer module (batch scoring)",
            "strategy": "anomaly",
            "level": "case",
            "cases": len(self.cases),
            "scored": len(self._reports),
            "failed": self._failed,
            **{k: str(v) for k, v in self._options.items()},
        }
        write_worklist(items, str(self.worklist_path), summary)
