"""AnomalyScoutModuleLib.worklist: reading rank's worklist, batch scoring a folder, "Load next case" order."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from AnomalyScoutModuleLib.worklist import (
    BatchProgress,
    BatchScoring,
    Worklist,
    WorklistEntry,
    case_name,
    find_cases,
    read_worklist,
    results_dir,
)
from module_helpers import write_contract_outputs

from AnomalyScoutLib.active.ranking import WorklistItem, write_worklist
from AnomalyScoutLib.errors import AnomalyScoutError, ResultsError


class ScriptedWorker:
    """A synchronous launcher playing the worker: writes the contract outputs of each case, or fails it."""

    def __init__(self, flagged_by_case: dict[str, tuple[int, ...] | None]) -> None:
        self.flagged_by_case = flagged_by_case
        self.launched: list[str] = []

    def __call__(self, args, cwd, on_line, on_exit):
        case = args[3].rsplit("/", 1)[-1].split(".")[0]
        out = args[args.index("--out") + 1]
        self.launched.append(case)
        flagged = self.flagged_by_case[case]
        if flagged is None:
            on_line(json.dumps({"event": "error", "message": "not a CT", "kind": "NotCTError"}))
            on_exit(1)
        else:
            write_contract_outputs(Path(out), flagged=flagged)
            on_line(
                json.dumps(
                    {"event": "done", "outputs": {}, "case_score": 1.0, "flagged_slices": list(flagged)}
                )
            )
            on_exit(0)

        class Process:
            pid = 1

        return Process()


def test_reads_ranks_worklist_in_file_order_with_its_extra_columns(tmp_path):
    path = tmp_path / "worklist.csv"
    path.write_text(
        "case,slice_range,score,percentile,reason\n"
        "b.nii.gz,10-14,0.2,80,diverse anatomy\n"
        "a.nii.gz,3-5,0.9,,rare appearance\n"
    )
    entries = read_worklist(path)
    assert [e.case for e in entries] == ["b.nii.gz", "a.nii.gz"]
    assert entries[0].extra == {"slice_range": "10-14"}
    assert math.isnan(entries[1].percentile) and entries[1].score == 0.9


@pytest.mark.parametrize(
    ("content", "match"),
    [("case,score,reason\nx,1,y\n", "percentile"), ("case,score,percentile,reason\nx,high,1,y\n", "number")],
)
def test_a_file_that_is_not_a_worklist_is_refused_with_its_problem(tmp_path, content, match):
    path = tmp_path / "w.csv"
    path.write_text(content)
    with pytest.raises(ResultsError, match=match):
        read_worklist(path)


def test_reads_the_worklist_that_anomalyscout_rank_writes(tmp_path):
    items = [
        WorklistItem(1, "/data/b.nii.gz", 10, 14, 0.5, math.nan, "rare appearance, diverse"),
        WorklistItem(2, "/data/a.nrrd", 3, 3, 0.25, 97.5, "anomalous slice"),
    ]
    write_worklist(items, str(tmp_path / "worklist.csv"), {"strategy": "hybrid"})
    entries = read_worklist(tmp_path / "worklist.csv")
    assert [(e.case, e.score, e.reason) for e in entries] == [(i.case, i.score, i.reason) for i in items]
    assert math.isnan(entries[0].percentile) and entries[1].percentile == 97.5
    assert entries[0].extra == {"rank": "1", "slice_start": "10", "slice_end": "14"}


def test_finds_volume_files_and_dicom_folders_only(tmp_path):
    for name in ("b.nii.gz", "a.nrrd", "notes.txt", "c.MHA"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "series1").mkdir()
    (tmp_path / "series1" / "1.dcm").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    assert [p.name for p in find_cases(tmp_path)] == ["a.nrrd", "b.nii.gz", "c.MHA", "series1"]
    with pytest.raises(AnomalyScoutError, match="does not exist"):
        find_cases(tmp_path / "nowhere")


def test_case_names_drop_double_suffixes():
    assert case_name("/x/liver_01.nii.gz") == "liver_01"
    assert case_name("/x/series1") == "series1"


def test_batch_scoring_ranks_cases_by_score_and_skips_a_failed_case(tmp_path):
    cases = [tmp_path / f"{name}.nrrd" for name in ("calm", "broken", "busy")]
    worker = ScriptedWorker({"calm": (), "broken": None, "busy": (5, 6)})
    seen, finished = [], []
    batch = BatchScoring(
        cases,
        tmp_path / "results",
        worker,
        BatchProgress(
            case_finished=lambda case, outcome: seen.append((case.name, outcome.status)),
            finished=finished.append,
        ),
        python="python3",
    )
    batch.start()

    assert seen == [("calm.nrrd", "done"), ("broken.nrrd", "failed"), ("busy.nrrd", "done")]
    entries = read_worklist(batch.worklist_path)
    assert finished == [entries]
    assert [e.case for e in entries] == [str(cases[2]), str(cases[0])]
    assert entries[0].score > entries[1].score
    assert "2 flagged" in entries[0].reason and entries[1].reason == "no flagged slice"
    # the busy case's hot range is its two flagged slices, and its heatmap is where the widget looks
    assert (entries[0].extra["slice_start"], entries[0].extra["slice_end"]) == ("5", "6")
    assert (results_dir(batch.out_root, cases[2]) / "residual.nrrd").is_file()
    summary = json.loads(batch.worklist_path.with_suffix(".json").read_text())
    assert summary["failed"] == [{"case": str(cases[1]), "error": "Failed: not a CT"}]
    assert (summary["cases"], summary["scored"], summary["level"]) == (3, 2, "case")


def test_a_cancelled_batch_starts_no_further_case_and_writes_no_worklist(tmp_path):
    cases = [tmp_path / f"{name}.nrrd" for name in ("one", "two")]
    worker = ScriptedWorker({"one": (), "two": ()})
    batch = BatchScoring(cases, tmp_path / "results", worker, python="python3")
    batch.progress = BatchProgress(case_finished=lambda case, outcome: batch.cancel())
    batch.start()
    assert worker.launched == ["one"]
    assert not batch.worklist_path.exists()


def test_an_empty_folder_or_clashing_names_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(AnomalyScoutError, match="no CT"):
        BatchScoring([], tmp_path, ScriptedWorker({}))
    with pytest.raises(AnomalyScoutError, match="share a name"):
        BatchScoring([tmp_path / "a.nrrd", tmp_path / "a.nii.gz"], tmp_path, ScriptedWorker({}))


def test_load_next_case_walks_the_rows_in_priority_order_once():
    # a slice-level worklist lists case x twice: both of its rows are visited
    worklist = Worklist([WorklistEntry(c, 1.0, 50.0, "") for c in ("x", "y", "x")])
    worklist.opened.add(1)
    assert worklist.next_entry().case == "x" and worklist.current_row == 0
    assert worklist.next_entry().case == "x" and worklist.current_row == 2
    assert worklist.next_entry() is None


def test_results_folders_have_safe_names():
    assert results_dir("/r", "/data/case 1 (v2).nii.gz").name == "case_1_v2_"
