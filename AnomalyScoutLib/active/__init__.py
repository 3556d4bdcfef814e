"""Active learning: which cases or slices an annotator should label next.

``strategies`` holds the selection rules (random, anomaly, diversity, hybrid, uncertainty, coreset),
``ranking`` turns scored cases into a worklist, ``cache`` keeps per-case scores between runs and
``distributed`` scores a pool in parallel (Dask, optional). The simulation that compares the strategies is
``benchmarks/active_learning.py``; its results are in ``docs/active_learning.md``.
"""

from __future__ import annotations

from AnomalyScoutLib.active.cache import ScoreCache, content_hash
from AnomalyScoutLib.active.distributed import CaseOutcome, score_pool
from AnomalyScoutLib.active.ranking import (
    CaseScorer,
    CaseScores,
    WorklistItem,
    build_worklist,
    write_worklist,
)
from AnomalyScoutLib.active.strategies import STRATEGIES, PoolSignals, Selection, select

__all__ = [
    "STRATEGIES",
    "CaseOutcome",
    "CaseScorer",
    "CaseScores",
    "PoolSignals",
    "ScoreCache",
    "Selection",
    "WorklistItem",
    "build_worklist",
    "content_hash",
    "score_pool",
    "select",
    "write_worklist",
]
