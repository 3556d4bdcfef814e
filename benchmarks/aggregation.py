"""One slice score from an anomaly map, the same for every baseline so that they differ only in their maps.

The mean of the top ``top_fraction`` of the map inside the body: a small lesion moves it (a plain mean would
drown a 1 cm lesion in a 30 cm body), one hot pixel of noise does not (a plain maximum would).
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEFAULT_TOP_FRACTION", "slice_scores"]

DEFAULT_TOP_FRACTION = 0.01


def slice_scores(
    maps: np.ndarray, body: np.ndarray, top_fraction: float = DEFAULT_TOP_FRACTION
) -> np.ndarray:
    """Mean of the largest ``top_fraction`` of map values inside ``body``, per slice (0 for an empty body).

    Args:
        maps: ``(n, h, w)`` anomaly maps.
        body: ``(n, h, w)`` bool masks of the pixels that count.
        top_fraction: Share of the body's pixels averaged, in (0, 1].
    """
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    if maps.shape != body.shape:
        raise ValueError(f"maps {maps.shape} and body {body.shape} differ in shape")
    scores = np.zeros(len(maps), dtype=np.float64)
    for i, (m, b) in enumerate(zip(maps, body)):
        values = m[b]
        if values.size == 0:
            continue
        k = max(1, int(round(top_fraction * values.size)))
        scores[i] = np.partition(values, values.size - k)[-k:].mean()
    return scores
