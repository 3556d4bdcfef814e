"""Scoring a pool of cases: cached, in parallel on one machine, or on a Dask cluster for large archives.

Why Dask distributed (not Ray, not a home-made pool): scoring a case is an independent, coarse task (seconds
to minutes, one file in, a few arrays out), which is just what ``Client.submit`` + ``as_completed`` express.
Dask's ``LocalCluster`` uses the same API on one machine as a scheduler address does on a cluster, so there is
one code path for ``--jobs N`` and ``--scheduler tcp://...``; it is pure Python, a light, pinned, optional
dependency (the ``distributed`` extra) that installs from PyPI everywhere Slicer's Python runs, and it is
common on HPC (``dask-jobqueue`` for SLURM/PBS). Ray would bring a large binary wheel, its own object store
and a dashboard daemon for what are a few hundred independent function calls.

Workers must see the case paths (a shared file system); each worker process loads the model once (the real
scorer caches it per process). A failed case becomes a :class:`CaseOutcome` with an ``error`` and never stops
the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from AnomalyScoutLib.active.cache import ScoreCache, content_hash
from AnomalyScoutLib.active.ranking import CaseScorer, CaseScores
from AnomalyScoutLib.errors import AnomalyScoutError, ConfigError

__all__ = ["CaseOutcome", "score_case", "score_pool"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaseOutcome:
    """The result for one case: ``scores``, or ``error`` (a one-line message) when it could not be scored."""

    case: str
    scores: CaseScores | None = None
    error: str | None = None
    cached: bool = False


def score_case(scorer: CaseScorer, case: str) -> CaseOutcome:
    """Run ``scorer`` on one case, turning any failure into an outcome with an error message.

    This is the task each worker runs. Catching every exception (not only AnomalyScoutError) is deliberate: in
    a batch of thousands, one case that trips a bug must be reported with its type and skipped, not abort the
    others; the message says it is an internal error so that it gets reported.
    """
    try:
        return CaseOutcome(case, scores=scorer(case))
    except AnomalyScoutError as error:
        return CaseOutcome(case, error=f"{type(error).__name__}: {error}")
    except Exception as error:  # noqa: BLE001 - see the docstring
        log.exception("internal error while scoring %s", case)
        return CaseOutcome(case, error=f"internal error ({type(error).__name__}: {error})")


@contextmanager
def _dask_client(jobs: int, scheduler: str | None) -> Iterator[Any]:
    """A Client on a fresh LocalCluster of ``jobs`` single-threaded worker processes, or on ``scheduler``."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as error:
        raise ConfigError(
            "parallel or distributed scoring needs Dask: pip install 'AnomalyScoutLib[distributed]'"
        ) from error
    if scheduler in (None, "local"):
        cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=None)
        with cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError, ValueError) as error:
        raise ConfigError(f"cannot reach the Dask scheduler at {scheduler}: {error}") from error
    with client:
        yield client


def _run(
    scorer: CaseScorer, cases: Sequence[str], jobs: int, scheduler: str | None, progress: bool
) -> Iterator[CaseOutcome]:
    """Yield outcomes as they complete: in this process when ``jobs == 1`` and no scheduler, else on Dask."""
    bar = tqdm(total=len(cases), unit="case", desc="scoring", disable=not progress or not cases)
    with bar:
        if jobs == 1 and scheduler is None:
            for case in cases:
                yield score_case(scorer, case)
                bar.update()
            return
        with _dask_client(jobs, scheduler) as client:
            from distributed import as_completed

            futures = {client.submit(score_case, scorer, case, pure=False): case for case in cases}
            for future in as_completed(futures):
                yield _collect(future, futures[future])
                bar.update()


def _collect(future: Any, case: str) -> CaseOutcome:
    """A finished task's outcome; a failure outside :func:`score_case` (a worker killed by the out-of-memory
    killer, a result that cannot be sent back) fails only that case, like any other error."""
    try:
        return future.result()
    except Exception as error:  # noqa: BLE001 - Dask re-raises whatever happened on the worker
        return CaseOutcome(case, error=f"worker failed ({type(error).__name__}: {error})")


def score_pool(
    cases: Sequence[str],
    scorer: CaseScorer,
    *,
    model_id: str,
    cache: ScoreCache | None = None,
    jobs: int = 1,
    scheduler: str | None = None,
    progress: bool = True,
) -> list[CaseOutcome]:
    """Score every case (cached ones are read back, not rescored), in the order of ``cases``.

    Args:
        cases: paths of CT files or DICOM folders.
        scorer: the per-case scoring function; it must be picklable for Dask (a module-level function or an
            object holding only paths and options).
        model_id: the model's id, half of every cache key.
        cache: where scores are kept between runs; None scores everything.
        jobs: worker processes on this machine (1: score in this process).
        scheduler: ``"local"`` for a LocalCluster of ``jobs`` workers, or the address of a running Dask
            scheduler (``tcp://host:8786``); None for the default chosen by ``jobs``.
        progress: show a progress bar with an ETA on stderr.

    Raises:
        ConfigError: ``jobs`` < 1, Dask missing or the scheduler unreachable.
    """
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    outcomes: dict[str, CaseOutcome] = {}
    keys: dict[str, str] = {}
    for case in cases:
        try:
            keys[case] = ScoreCache.key(content_hash(case), model_id)
        except AnomalyScoutError as error:
            outcomes[case] = CaseOutcome(case, error=f"{type(error).__name__}: {error}")
            continue
        cached = cache.get(keys[case]) if cache is not None else None
        if cached is not None:
            outcomes[case] = CaseOutcome(case, scores=cached, cached=True)
    todo = [case for case in dict.fromkeys(cases) if case not in outcomes]
    for outcome in _run(scorer, todo, jobs, scheduler, progress):
        outcomes[outcome.case] = outcome
        if cache is not None and outcome.scores is not None:
            cache.put(keys[outcome.case], outcome.scores)
    return [outcomes[case] for case in cases]
