"""Worklists from scored cases: levels, slice ranges, reasons, and the CSV/JSON files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from AnomalyScoutLib.active.ranking import CaseScores, build_worklist, hot_range, write_worklist
from AnomalyScoutLib.errors import ConfigError


def _case(scores, latents=None, calibrated: bool = True, percentiles=None) -> CaseScores:
    """Percentiles default to 100 × score (NaN uncalibrated); the case's are the maxima of its slices'."""
    scores = np.asarray(scores, dtype=np.float64)
    latents = np.stack([scores, np.zeros_like(scores)], 1) if latents is None else np.asarray(latents)
    if percentiles is None:
        percentiles = 100 * scores if calibrated else np.full_like(scores, np.nan)
    percentiles = np.asarray(percentiles, dtype=np.float64)
    return CaseScores(scores, percentiles, float(scores.max()), float(percentiles.max()), latents)


def test_hot_range_is_the_run_of_high_slices_around_the_peak():
    assert hot_range(np.array([0.1, 0.1, 0.65, 0.9, 0.7, 0.1, 0.8, 0.1])) == (2, 4)
    assert hot_range(np.array([0.5, 0.5, 0.5])) == (0, 2)
    assert hot_range(np.array([np.nan, 0.2, 0.1])) == (1, 1)


def test_case_level_anomaly_worklist_orders_cases_by_percentile_with_their_hot_range():
    cases = [("a", _case([0.1, 0.2, 0.1])), ("b", _case([0.1, 0.8, 0.9, 0.1])), ("c", _case([0.5, 0.1]))]
    items = build_worklist(cases, "anomaly", 2, level="case")
    assert [(i.rank, i.case, i.slice_start, i.slice_end) for i in items] == [(1, "b", 1, 2), (2, "c", 0, 0)]
    assert items[0].percentile == pytest.approx(90.0)
    assert "90th percentile" in items[0].reason


def test_slice_level_items_are_single_slices_across_cases():
    cases = [("a", _case([0.1, 0.95, 0.2])), ("b", _case([0.9, 0.1]))]
    items = build_worklist(cases, "anomaly", 3, level="slice")
    assert [(i.case, i.slice_start, i.slice_end) for i in items] == [("a", 1, 1), ("b", 0, 0), ("a", 2, 2)]


def test_hybrid_case_worklist_skips_a_near_copy_of_a_case_already_chosen():
    # b and b_copy have the same anomaly (same latents), c a different one with a slightly lower score.
    cases = [
        ("b", _case([0.1, 0.99], latents=[[5, 0], [5, 0]])),
        ("b_copy", _case([0.1, 0.98], latents=[[5, 0], [5, 0.1]])),
        ("c", _case([0.97, 0.1], latents=[[0, 5], [0, 5]])),
        ("n", _case([0.1, 0.1], latents=[[0, 0], [0, 0]])),
    ]
    assert [i.case for i in build_worklist(cases, "anomaly", 2)] == ["b", "b_copy"]
    hybrid = build_worklist(cases, "hybrid", 2)
    assert [i.case for i in hybrid] == ["b", "c"]
    assert hybrid[0].reason.startswith("hybrid: the most anomalous") and "unlike" in hybrid[1].reason


@pytest.mark.parametrize("strategy", ["anomaly", "hybrid"])
def test_calibrated_cases_rank_by_percentile_even_against_the_raw_scores(strategy):
    # a: a high raw score where normal scans score high too (pelvis); b: a lower score, rare at its position
    cases = [
        ("a", _case([0.9, 0.1], percentiles=[60.0, 5.0])),
        ("b", _case([0.1, 0.4], percentiles=[5.0, 99.0])),
    ]
    assert [i.case for i in build_worklist(cases, strategy, 2, level="case")] == ["b", "a"]
    slices = build_worklist(cases, strategy, 2, level="slice")
    assert [(i.case, i.slice_start) for i in slices][0] == ("b", 1)
    assert "99th percentile" in slices[0].reason


def test_uncalibrated_scores_rank_by_raw_score():
    cases = [("a", _case([0.3], calibrated=False)), ("b", _case([0.6], calibrated=False))]
    items = build_worklist(cases, "anomaly", 1)
    assert items[0].case == "b" and np.isnan(items[0].percentile) and "uncalibrated" in items[0].reason


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "uncertainty"}, "segmentation|anomaly scores alone"),
        ({"level": "voxel"}, "level"),
    ],
)
def test_refuses_what_a_worklist_cannot_do(kwargs, message):
    kwargs = {"strategy": "hybrid", **kwargs}
    with pytest.raises(ConfigError, match=message):
        build_worklist([("a", _case([0.1]))], kwargs.pop("strategy"), 1, **kwargs)


def test_inconsistent_case_scores_are_refused():
    with pytest.raises(ConfigError, match="inconsistent"):
        CaseScores(np.zeros(3), np.zeros(2), 0.0, 0.0, np.zeros((3, 2)))


def test_writes_the_same_worklist_as_csv_and_json(tmp_path):
    cases = [("a", _case([0.1, 0.95])), ("b", _case([0.2], calibrated=False))]
    items = build_worklist(cases, "anomaly", 2, level="slice")
    json_path = write_worklist(items, str(tmp_path / "worklist.csv"), {"strategy": "anomaly", "failed": []})
    with open(tmp_path / "worklist.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    document = json.loads(open(json_path).read())
    assert json_path.endswith("worklist.json")
    assert [r["case"] for r in rows] == [i["case"] for i in document["items"]] == ["a", "b"]
    assert document["strategy"] == "anomaly" and document["items"][1]["percentile"] is None
    assert rows[1]["percentile"] == ""
    assert set(rows[0]) == {"rank", "case", "slice_start", "slice_end", "score", "percentile", "reason"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left
