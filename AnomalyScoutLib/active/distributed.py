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

Security: Dask sends tasks and results as **pickles**, and unpickling runs code. Over ``tcp://`` nothing is
encrypted or authenticated, so anyone who can reach the scheduler's port can run code on the workers (and
read the scores), and a scheduler or worker that is not ours could run code in this process through the
results it sends back. ``tcp://`` is for a scheduler on this machine or a network only you use; on a shared
cluster use ``tls://`` with certificates (:class:`TlsFiles`, ``rank --tls-ca-file/--tls-cert/--tls-key``):
mutual TLS then admits only holders of a certificate signed by the cluster's authority.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tqdm import tqdm

from AnomalyScoutLib.active.cache import ScoreCache, content_hash
from AnomalyScoutLib.active.ranking import CaseScorer, CaseScores
from AnomalyScoutLib.errors import AnomalyScoutError, ConfigError

__all__ = ["CaseOutcome", "TlsFiles", "insecure_scheduler_warning", "score_case", "score_pool"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaseOutcome:
    """The result for one case: ``scores``, or ``error`` (a one-line message) when it could not be scored."""

    case: str
    scores: CaseScores | None = None
    error: str | None = None
    cached: bool = False


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of mutual TLS with a ``tls://`` Dask scheduler (Dask's ``Security``).

    Attributes:
        ca_file: the certificate authority that signed the scheduler's and the workers' certificates.
        cert: this client's certificate (it may hold the private key too).
        key: this client's private key, when it is not in ``cert``.
    """

    ca_file: str
    cert: str
    key: str | None = None

    def security(self) -> Any:
        """Dask's ``Security`` with encryption required (``ConfigError`` for a file that is not there)."""
        from distributed.security import Security

        files = {"--tls-ca-file": self.ca_file, "--tls-cert": self.cert, "--tls-key": self.key}
        for option, path in files.items():
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{option}: {path} is not a file")
        return Security(
            tls_ca_file=self.ca_file,
            tls_client_cert=self.cert,
            tls_client_key=self.key,
            require_encryption=True,
        )


def insecure_scheduler_warning(scheduler: str | None) -> str | None:
    """One line to show before connecting to ``scheduler`` over plain TCP to another machine, else None."""
    if scheduler is None or scheduler == "local":
        return None
    parts = urlsplit(scheduler if "://" in scheduler else f"tcp://{scheduler}")
    if parts.scheme not in ("tcp", "") or parts.hostname in ("localhost", "127.0.0.1", "::1"):
        return None
    return (
        f"{scheduler}: Dask exchanges pickles over an unencrypted, unauthenticated connection; anyone who "
        "can reach the scheduler can run code on its workers and in this process. Use tls:// with "
        "--tls-ca-file/--tls-cert on a shared network"
    )


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
def _dask_client(jobs: int, scheduler: str | None, tls: TlsFiles | None) -> Iterator[Any]:
    """A Client on a fresh LocalCluster of ``jobs`` single-threaded worker processes, or on ``scheduler``."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as error:
        raise ConfigError(
            "parallel or distributed scoring needs Dask: pip install 'AnomalyScoutLib[distributed]'"
        ) from error
    if tls is not None and not (scheduler or "").startswith("tls://"):
        raise ConfigError(f"the TLS files need a tls:// scheduler address, got {scheduler or '--jobs'}")
    if scheduler in (None, "local"):
        cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=None)
        with cluster, Client(cluster) as client:
            yield client
        return
    security = {} if tls is None else {"security": tls.security()}
    try:
        client = Client(scheduler, timeout="20s", **security)
    except (OSError, TimeoutError, ValueError) as error:
        raise ConfigError(f"cannot reach the Dask scheduler at {scheduler}: {error}") from error
    with client:
        yield client


def _run(
    scorer: CaseScorer,
    cases: Sequence[str],
    jobs: int,
    scheduler: str | None,
    tls: TlsFiles | None,
    progress: bool,
) -> Iterator[CaseOutcome]:
    """Yield outcomes as they complete: in this process when ``jobs == 1`` and no scheduler, else on Dask."""
    bar = tqdm(total=len(cases), unit="case", desc="scoring", disable=not progress or not cases)
    with bar:
        if jobs == 1 and scheduler is None:
            for case in cases:
                yield score_case(scorer, case)
                bar.update()
            return
        with _dask_client(jobs, scheduler, tls) as client:
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
    tls: TlsFiles | None = None,
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
            scheduler (``tls://host:8786``, or ``tcp://`` on a trusted network only: see the module's notes);
            None for the default chosen by ``jobs``.
        tls: the certificates for a ``tls://`` scheduler.
        progress: show a progress bar with an ETA on stderr.

    Raises:
        ConfigError: ``jobs`` < 1, Dask missing, the scheduler unreachable, TLS files missing or given
            without a ``tls://`` address.
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
    for outcome in _run(scorer, todo, jobs, scheduler, tls, progress):
        outcomes[outcome.case] = outcome
        if cache is not None and outcome.scores is not None:
            cache.put(keys[outcome.case], outcome.scores)
    return [outcomes[case] for case in cases]
