"""Scoring a pool: failures reported and skipped, the cache used, and Dask giving the local result."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from AnomalyScoutLib.active.cache import ScoreCache
from AnomalyScoutLib.active.distributed import TlsFiles, insecure_scheduler_warning, score_pool
from AnomalyScoutLib.active.ranking import build_worklist
from AnomalyScoutLib.errors import ConfigError


def _counting(scorer, calls: list[str]):
    def counted(case: str):
        calls.append(case)
        return scorer(case)

    return counted


def test_a_failed_case_is_reported_and_the_others_are_scored(tmp_path, make_case, scorer):
    broken = tmp_path / "broken.nrrd"
    broken.write_text("not an image")
    cases = [make_case("a", [0.1, 0.4]), str(broken), str(tmp_path / "missing.nrrd"), make_case("b", [0.3])]
    outcomes = score_pool(cases, scorer, model_id="m", progress=False)
    assert [o.case for o in outcomes] == cases
    assert [o.scores is not None for o in outcomes] == [True, False, False, True]
    assert "UnreadableVolumeError" in outcomes[1].error and "missing" in outcomes[2].error


def test_an_unexpected_exception_in_one_case_is_reported_as_internal_error_and_skipped(make_case):
    def buggy(case: str):
        raise ZeroDivisionError("oops")

    outcome = score_pool([make_case("a", [0.1])], buggy, model_id="m", progress=False)[0]
    assert outcome.scores is None
    assert "internal error" in outcome.error and "ZeroDivisionError" in outcome.error


def test_a_rerun_on_a_grown_pool_scores_only_the_new_cases(tmp_path, make_case, scorer):
    cache = ScoreCache(tmp_path / "cache")
    calls: list[str] = []
    first = [make_case("a", [0.1]), make_case("b", [0.2])]
    score_pool(first, _counting(scorer, calls), model_id="m", cache=cache, progress=False)
    grown = [*first, make_case("c", [0.3])]
    outcomes = score_pool(grown, _counting(scorer, calls), model_id="m", cache=cache, progress=False)
    assert calls == [*first, grown[2]]
    assert [o.cached for o in outcomes] == [True, True, False]
    score_pool(grown, _counting(scorer, calls), model_id="other", cache=cache, progress=False)
    assert len(calls) == 6  # another model scores everything again


def test_refuses_zero_jobs(make_case, scorer):
    with pytest.raises(ConfigError, match="jobs"):
        score_pool([make_case("a", [0.1])], scorer, model_id="m", jobs=0)


def test_a_dask_local_cluster_of_two_workers_gives_the_local_ranking(tmp_path, make_case, scorer):
    pytest.importorskip("distributed", reason="needs the distributed extra")
    rng = np.random.default_rng(0)
    cases = [make_case(f"case{i}", rng.random(4), rng.normal(size=(4, 2))) for i in range(6)]
    broken = tmp_path / "broken.nrrd"
    broken.write_text("not an image")
    cases.append(str(broken))
    local = score_pool(cases, scorer, model_id="m", progress=False)
    on_dask = score_pool(cases, scorer, model_id="m", jobs=2, scheduler="local", progress=False)
    assert [o.error is None for o in on_dask] == [o.error is None for o in local]
    scored = [[(o.case, o.scores) for o in outcomes if o.scores is not None] for outcomes in (local, on_dask)]
    for level in ("case", "slice"):
        rankings = [build_worklist(s, "hybrid", 5, level=level) for s in scored]
        assert rankings[0] == rankings[1]


def _unsendable(case: str):
    """A "scorer" whose result cannot be pickled back from the worker (a generator)."""
    return (x for x in [case])


def test_a_task_that_fails_on_the_dask_worker_is_reported_not_raised(make_case):
    pytest.importorskip("distributed", reason="needs the distributed extra")
    cloudpickle = pytest.importorskip("cloudpickle", reason="needs the distributed extra")

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cases = [make_case("a", [0.1])]
    outcome = score_pool(cases, _unsendable, model_id="m", jobs=1, scheduler="local", progress=False)[0]
    assert outcome.scores is None and outcome.error.startswith("worker failed")


def test_tls_files_without_a_tls_scheduler_address_are_refused(make_case, scorer, tmp_path):
    pytest.importorskip("distributed", reason="needs the distributed extra")
    tls = TlsFiles(str(tmp_path / "ca.pem"), str(tmp_path / "client.pem"))
    with pytest.raises(ConfigError, match="tls://"):
        score_pool([make_case("a", [0.1])], scorer, model_id="m", scheduler="tcp://10.1.2.3:8786", tls=tls)


def test_a_missing_certificate_is_named_by_its_option(tmp_path):
    pytest.importorskip("distributed", reason="needs the distributed extra")
    (tmp_path / "ca.pem").write_text("ca")
    with pytest.raises(ConfigError, match="--tls-cert"):
        TlsFiles(str(tmp_path / "ca.pem"), str(tmp_path / "missing.pem")).security()


def test_the_tls_files_reach_dask_with_encryption_required(make_case, scorer, tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed", reason="needs the distributed extra")
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text(name)
    seen = {}

    def client(address, **kwargs):
        seen.update(kwargs, address=address)
        raise OSError("no scheduler in a test")

    monkeypatch.setattr(distributed, "Client", client)
    tls = TlsFiles(str(tmp_path / "ca.pem"), str(tmp_path / "client.pem"), str(tmp_path / "client.key"))
    with pytest.raises(ConfigError, match="cannot reach"):
        score_pool([make_case("a", [0.1])], scorer, model_id="m", scheduler="tls://10.1.2.3:8786", tls=tls)
    security = seen["security"]
    assert seen["address"] == "tls://10.1.2.3:8786" and security.require_encryption
    assert (security.tls_ca_file, security.tls_client_cert, security.tls_client_key) == (
        tls.ca_file,
        tls.cert,
        tls.key,
    )


@pytest.mark.parametrize(
    ("scheduler", "warned"),
    [
        ("tcp://10.1.2.3:8786", True),
        ("10.1.2.3:8786", True),
        ("tcp://localhost:8786", False),
        ("tls://10.1.2.3:8786", False),
        ("local", False),
        (None, False),
    ],
)
def test_plain_tcp_to_another_machine_is_warned_about(scheduler, warned):
    warning = insecure_scheduler_warning(scheduler)
    assert (warning is not None) == warned
    assert warning is None or "pickles" in warning
