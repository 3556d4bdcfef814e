"""Fake cases and a fake scorer: the ranking, cache and distributed code are tested without a network.

A fake case is a ``.npy`` file holding an (n_slices, 4) array: column 0 is each slice's score, column 1 its
calibrated percentile, columns 2-3 its latent code. :func:`fake_scorer` reads it back as :class:`CaseScores`,
so a test controls exactly what the "model" says about each case, and a file that is not ``.npy`` fails like
an unreadable CT. Percentiles default to 100 × score; tests of calibrated ranking set them apart from the
scores, as a calibration by body position does (a noisy region's high raw score can be a low percentile).
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
    """Scores of a fake case file; the case score and percentile are the maxima of the slices'."""
    try:
        table = np.load(case, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UnreadableVolumeError(f"{case}: not a fake case") from error
    scores, percentiles = table[:, 0], table[:, 1]
    return CaseScores(scores, percentiles, float(scores.max()), float(percentiles.max()), table[:, 2:])


@pytest.fixture
def scorer() -> Callable[[str], CaseScores]:
    """The fake scorer; with Dask's extra installed, registered to pickle by value so that worker processes
    can run it (without it, the tests that need Dask skip themselves and the others run as usual)."""
    try:
        import cloudpickle
    except ImportError:
        return fake_scorer
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return fake_scorer


@pytest.fixture
def make_case(tmp_path: Path) -> Callable[..., str]:
    """``make_case(name, scores, latents=None, percentiles=None)`` writes a fake case and returns its path."""

    def make(name: str, scores, latents=None, percentiles=None) -> str:
        scores = np.asarray(scores, dtype=np.float64)
        if latents is None:
            latents = np.stack([scores, np.zeros_like(scores)], axis=1)
        percentiles = 100 * scores if percentiles is None else np.asarray(percentiles, dtype=np.float64)
        path = tmp_path / f"{name}.npy"
        np.save(path, np.column_stack([scores, percentiles, np.asarray(latents, dtype=np.float64)]))
        return str(path)

    return make
