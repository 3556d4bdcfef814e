"""The worker as a GUI runs it: a separate process, JSON lines on stdout, exit codes, cancellation."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from AnomalyScoutLib.io.volume import write_volume
from AnomalyScoutLib.worker.protocol import parse_event

REPO = Path(__file__).resolve().parents[3]
#: A hang guard only (a broken worker must not stall the suite), not a speed requirement.
HANG_GUARD_S = 120


@pytest.fixture(scope="module")
def files(tiny_phantom, tiny_model_file, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("worker")
    write_volume(tiny_phantom.volume, folder / "ct.nrrd")
    (folder / "not_ct.nrrd").write_text("this is not an image")
    return {"ct": folder / "ct.nrrd", "bad": folder / "not_ct.nrrd", "model": tiny_model_file}


def _command(ct: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "AnomalyScoutLib.worker", str(ct), "--out", str(out), "--model", str(model),
            "--device", "cpu", "--threads", "1", *extra]  # fmt: skip


def _start(command: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _run(command: list[str]) -> tuple[int, list[dict], list[str]]:
    process = _start(command)
    stdout, _ = process.communicate(timeout=HANG_GUARD_S)
    lines = stdout.splitlines()
    return process.returncode, [e for e in map(parse_event, lines) if e is not None], lines


def test_a_successful_run_reports_started_progress_and_done_with_its_outputs(files, tmp_path):
    code, events, lines = _run(_command(files["ct"], tmp_path / "out", files["model"]))
    kinds = [e["event"] for e in events]
    assert code == 0, events
    assert len(events) == len(lines)  # nothing but protocol messages on stdout
    assert kinds[0] == "started" and kinds[-1] == "done"
    assert kinds.count("progress") == events[0]["slices"]
    assert [e["i"] for e in events if e["event"] == "progress"] == list(range(1, events[0]["slices"] + 1))
    done = events[-1]
    assert set(done["outputs"]) == {
        "residual.nrrd",
        "reconstruction.nrrd",
        "scores.csv",
        "scores.json",
        "flagged.png",
    }
    assert all(Path(p).is_file() for p in done["outputs"].values())
    assert done["flagged_slices"] == [
        s["slice_index"]
        for s in json.loads((tmp_path / "out" / "scores.json").read_text())["slices"]
        if s["flagged"]
    ]


@pytest.mark.parametrize(
    ("which", "extra", "code", "kind"),
    [
        ("bad", (), 1, "UnreadableVolumeError"),
        ("ct", ("--mode", "turbo"), 2, "UsageError"),
        ("no-model", (), 1, "ModelFileError"),
    ],
)
def test_bad_inputs_give_an_error_line_a_nonzero_exit_and_no_output(
    files, tmp_path, which, extra, code, kind
):
    ct = files["ct"] if which in ("ct", "no-model") else files[which]
    model = tmp_path / "absent.safetensors" if which == "no-model" else files["model"]
    status, events, _ = _run(_command(ct, tmp_path / "out", model, *extra))
    assert status == code
    assert events[-1]["event"] == "error" and events[-1]["kind"] == kind and events[-1]["message"]
    assert list(tmp_path.iterdir()) == []


def test_sigterm_after_the_first_progress_line_cancels_and_leaves_nothing_behind(files, tmp_path):
    out = tmp_path / "out"
    command = _command(
        files["ct"], out, files["model"], "--mode", "accurate", "--steps", "50", "--batch-size", "1"
    )
    process = _start(command)
    events = []
    for line in process.stdout:
        event = parse_event(line)
        if event is not None:
            events.append(event)
        if event is not None and event["event"] == "progress":
            process.send_signal(signal.SIGTERM)
            break
    rest, _ = process.communicate(timeout=HANG_GUARD_S)
    events += [e for e in map(parse_event, rest.splitlines()) if e is not None]
    assert process.returncode == 130
    assert events[-1]["event"] == "error" and events[-1]["kind"] == "CancelledError"
    assert "done" not in [e["event"] for e in events]
    assert list(tmp_path.iterdir()) == []  # neither the output folder nor a temporary one


@pytest.fixture(scope="module")
def segmentation(tiny_phantom, files) -> Path:
    """The tiny phantom's label map (every organ > 0) on the CT's grid: what ``--review`` reviews."""
    from AnomalyScoutLib.io.volume import Volume

    volume = tiny_phantom.volume
    path = files["ct"].with_name("labels.nrrd")
    labels = (tiny_phantom.labels > 0).astype("uint8")
    write_volume(Volume(labels, volume.spacing_xyz, volume.origin_xyz, volume.direction), path)
    return path


def test_the_review_job_reports_like_scoring_and_its_done_line_lists_the_slices_at_risk(
    files, segmentation, tmp_path
):
    out = tmp_path / "out"
    code, events, lines = _run(_command(files["ct"], out, files["model"], "--review", str(segmentation)))
    assert code == 0, events
    assert len(events) == len(lines)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "done"
    assert kinds.count("progress") == events[0]["slices"]
    done = events[-1]
    assert {"review.csv", "review.png", "review_region.nrrd", "scores.json"} <= set(done["outputs"])
    assert all(Path(p).is_file() for p in done["outputs"].values())
    with open(out / "review.csv", newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["flagged"] == "1"]
    assert rows, "no slice at risk: the check below would compare two empty lists"
    riskiest_first = sorted(rows, key=lambda r: -float(r["risk"]))
    assert done["flagged_slices"] == [int(r["slice_index"]) for r in riskiest_first]


def test_review_with_a_scoring_only_option_is_a_usage_error_and_writes_nothing(files, segmentation, tmp_path):
    extra = ("--review", str(segmentation), "--mask", str(segmentation))
    status, events, _ = _run(_command(files["ct"], tmp_path / "out", files["model"], *extra))
    assert status == 2
    assert events[-1]["kind"] == "UsageError" and "--mask" in events[-1]["message"]
    assert list(tmp_path.iterdir()) == []


def test_label_without_review_is_a_usage_error(files, tmp_path):
    status, events, _ = _run(_command(files["ct"], tmp_path / "out", files["model"], "--label", "2"))
    assert status == 2 and "--mask-label" in events[-1]["message"]
    assert list(tmp_path.iterdir()) == []
