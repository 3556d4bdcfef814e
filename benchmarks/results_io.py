"""Where the benchmark's results and pictures go, and how they are written (atomically, readable JSON)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DOCS_PLOTS", "RESULTS_DIR", "write_json"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DOCS_PLOTS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"


def _plain(value: Any) -> Any:
    """numpy scalars/arrays to Python, non-finite floats to None (JSON has no NaN), floats to 4 decimals."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return round(value, 4) if math.isfinite(value) else None
    return value


def write_json(data: dict[str, Any], path: Path) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (temporary name in the folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".json", dir=path.parent)
    with os.fdopen(fd, "w") as stream:
        json.dump(_plain(data), stream, indent=1)
        stream.write("\n")
    os.replace(tmp, path)
