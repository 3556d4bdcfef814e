"""Anomalies inserted into a rendered normal case (placeholder registry, filled in next)."""

from __future__ import annotations

from typing import Any

import numpy as np

from AnomalyScoutLib.phantom.anatomy import Anatomy

__all__ = ["ANOMALY_CODES", "insert_anomaly"]

ANOMALY_CODES: dict[str, int] = {}


def insert_anomaly(
    kind: str, hu: np.ndarray, anatomy: Anatomy, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    raise NotImplementedError(kind)
