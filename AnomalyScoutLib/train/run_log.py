"""A run folder's ``log.csv``: a row appended per checkpoint or validation, the header with the first.

The head's and the denoiser's trainers append their rows here, so a resumed run continues the same file.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["append_log_row"]


def append_log_row(path: Path, row: Mapping[str, Any]) -> None:
    """Append ``row`` to the CSV at ``path``, with a header of its keys when the file is new."""
    new = not path.is_file()
    with path.open("a", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
