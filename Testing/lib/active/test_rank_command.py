"""``anomalyscout rank`` end to end with the fake scorer: files written, failures skipped, cache reused."""

from __future__ import annotations

import csv
import json

import pytest

from AnomalyScoutLib.cli import main
from AnomalyScoutLib.commands import rank


@pytest.fixture
def fake_model(monkeypatch, scorer):
    calls: list[str] = []

    def counted(case: str):
        calls.append(case)
        return scorer(case)

    monkeypatch.setattr(
        rank, "load_case_scorer", lambda model, device, position: (counted, "fake-model-1", "index", "fake-1")
    )
    return calls


def _rank(tmp_path, *args: str) -> int:
    out, cache = tmp_path / "worklist.csv", tmp_path / "cache"
    return main(["rank", *args, "--out", str(out), "--cache-dir", str(cache), "--no-progress"])


def test_writes_csv_and_json_worklists_and_skips_a_failed_case(tmp_path, make_case, fake_model, capsys):
    broken = tmp_path / "broken.nrrd"
    broken.write_text("garbage")
    cases = [
        make_case("a", [0.1, 0.2]),
        str(broken),
        make_case("b", [0.2, 0.9, 0.85, 0.1]),
        make_case("c", [0.5]),
    ]
    assert _rank(tmp_path, *cases, "--strategy", "anomaly", "--budget", "2") == 0
    with open(tmp_path / "worklist.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [(r["rank"], r["case"], r["slice_start"], r["slice_end"]) for r in rows] == [
        ("1", cases[2], "1", "2"),
        ("2", cases[3], "0", "0"),
    ]
    document = json.loads((tmp_path / "worklist.json").read_text())
    assert document["model_id"] == "fake-model-1" and document["scored"] == 3
    assert [f["case"] for f in document["failed"]] == [str(broken)]
    assert "skipped" in capsys.readouterr().err


def test_the_worklist_follows_the_calibrated_percentiles_not_the_raw_scores(tmp_path, make_case, fake_model):
    noisy = make_case("noisy", [0.9, 0.2], percentiles=[55.0, 10.0])
    rare = make_case("rare", [0.3, 0.2], percentiles=[99.5, 10.0])
    assert _rank(tmp_path, noisy, rare, "--strategy", "anomaly", "--budget", "2") == 0
    items = json.loads((tmp_path / "worklist.json").read_text())["items"]
    assert [(i["case"], i["percentile"]) for i in items] == [(rare, 99.5), (noisy, 55.0)]


def test_a_rerun_with_a_grown_list_scores_only_the_new_case(tmp_path, make_case, fake_model):
    listed = [make_case("a", [0.1]), make_case("b", [0.4])]
    (tmp_path / "pool.txt").write_text("# pool\n" + "\n".join(p.split("/")[-1] for p in listed) + "\n\n")
    assert _rank(tmp_path, "--list", str(tmp_path / "pool.txt"), "--budget", "1", "--level", "slice") == 0
    new = make_case("c", [0.9])
    assert _rank(tmp_path, "--list", str(tmp_path / "pool.txt"), new, "--budget", "1") == 0
    assert [p.split("/")[-1] for p in fake_model] == ["a.npy", "b.npy", "c.npy"]
    document = json.loads((tmp_path / "worklist.json").read_text())
    assert document["from_cache"] == 2 and document["items"][0]["case"] == new


def test_the_same_worklist_comes_from_two_local_dask_workers(tmp_path, make_case, fake_model):
    pytest.importorskip("distributed", reason="needs the distributed extra")
    cases = [make_case(f"c{i}", [0.1 * i, 0.05 * i]) for i in range(1, 5)]
    assert _rank(tmp_path, *cases, "--budget", "3", "--no-cache") == 0
    serial = (tmp_path / "worklist.csv").read_text()
    assert _rank(tmp_path, *cases, "--budget", "3", "--no-cache", "--jobs", "2", "--scheduler", "local") == 0
    assert (tmp_path / "worklist.csv").read_text() == serial


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "no cases"),
        (["x.npy", "--budget", "0"], "budget"),
        (["x.npy", "--out", "list.json"], ".csv"),
    ],
)
def test_refuses_bad_arguments_with_one_line_and_exit_code_1(tmp_path, fake_model, capsys, args, message):
    argv = ["rank", "--budget", "1", "--out", str(tmp_path / "w.csv"), "--no-cache", *args]
    assert main(argv) == 1
    assert message in capsys.readouterr().err


def test_exits_1_when_no_case_could_be_scored(tmp_path, fake_model, capsys):
    assert _rank(tmp_path, str(tmp_path / "missing.nrrd"), "--budget", "1") == 1
    assert "none of the 1 cases" in capsys.readouterr().err
    assert json.loads((tmp_path / "worklist.json").read_text())["items"] == []


def test_a_tls_certificate_without_its_authority_is_refused_before_scoring(
    tmp_path, make_case, fake_model, capsys
):
    code = _rank(tmp_path, make_case("a", [0.1]), "--budget", "1", "--tls-cert", "client.pem")
    assert code != 0 and "--tls-ca-file" in capsys.readouterr().err and fake_model == []
