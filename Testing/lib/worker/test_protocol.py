"""The worker's JSON-lines messages and the tolerant reader."""

from __future__ import annotations

import io
import json
import math

from AnomalyScoutLib.worker.protocol import Done, ErrorEvent, EventWriter, Progress, Started, parse_event


def test_each_event_is_one_json_line_with_its_event_key():
    stream = io.StringIO()
    writer = EventWriter(stream)
    writer.emit(Started(slices=3, device="cpu", mode="fast", model_id="m"))
    writer.emit(Progress(i=1, n=3, slice_index=0, score=0.5, eta_s=1.234))
    writer.emit(Done(outputs={"scores.csv": "/x/scores.csv"}, case_score=0.7, flagged_slices=[2]))
    writer.emit(ErrorEvent(message="bad file", kind="VolumeError"))
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["started", "progress", "done", "error"]
    assert json.loads(lines[1]) == {
        "i": 1,
        "n": 3,
        "slice_index": 0,
        "score": 0.5,
        "eta_s": 1.23,
        "event": "progress",
    }


def test_non_finite_numbers_travel_as_null_so_every_line_stays_valid_json():
    stream = io.StringIO()
    EventWriter(stream).emit(Progress(i=1, n=1, slice_index=0, score=math.nan, eta_s=math.inf))
    message = json.loads(stream.getvalue())
    assert message["score"] is None and message["eta_s"] is None


def test_reader_skips_log_noise_and_unknown_events():
    assert parse_event("UserWarning: something deprecated\n") is None
    assert parse_event("{not json") is None
    assert parse_event('{"event": "unknown"}') is None
    assert parse_event("[1, 2]") is None
    assert parse_event('  {"event": "warning", "message": "m"}  ') == {"event": "warning", "message": "m"}
