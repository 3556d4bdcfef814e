"""Fake cases and a fake scorer: the ranking, cache and distributed code are tested without a network.

A fake case is a ``.npy`` file holding an (n_slices, 3) array: column 0 is each slice's score, columns 1-2
its latent code. :func:`fake_scorer` reads it back as :class:`CaseScores`, so a test controls exactly what
the "model" says about each case, and a file that is not ``.npy`` fails like an unreadable CT.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from AnomalyScoutLib.active.ranking import CaseScores
from AnomalyScoutLib.errors import UnreadableVolumeError


def fake_scorer(case: str) -> CaseScores:
    """Scores of a fake case file; percentiles are the scores × 100, the case score is the maximum."""
    try:
        table = np.load(case, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UnreadableVolumeError(f"{case}: not a fake case") from error
    scores = table[:, 0]
    return CaseScores(scores, 100 * scores, float(scores.max()), float(100 * scores.max()), table[:, 1:])


@pytest.fixture
def scorer() -> Callable[[str], CaseScores]:
    """The fake scorer, registered to pickle by value so that Dask worker processes can run it."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return fake_scorer


@pytest.fixture
def make_case(tmp_path: Path) -> Callable[..., str]:
    """``make_case(name, scores, latents=None)`` writes a fake case and returns its path."""

    def make(name: str, scores, latents=None) -> str:
        scores = np.asarray(scores, dtype=np.float64)
        if latents is None:
            latents = np.stack([scores, np.zeros_like(scores)], axis=1)
        path = tmp_path / f"{name}.npy"
        np.save(path, np.column_stack([scores, np.asarray(latents, dtype=np.float64)]))
        return str(path)

    return make
