"""Synthetic abdominal CT: seeded normal anatomy with exact anomaly masks, for training and testing."""

from __future__ import annotations

from AnomalyScoutLib.phantom.anatomy import LABEL_NAMES
from AnomalyScoutLib.phantom.anomalies import ANOMALY_CODES
from AnomalyScoutLib.phantom.case import InsertedAnomaly, PhantomCase, make_phantom

__all__ = ["ANOMALY_CODES", "LABEL_NAMES", "InsertedAnomaly", "PhantomCase", "make_phantom"]
