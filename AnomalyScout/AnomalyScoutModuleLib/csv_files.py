"""Reading the CSV files the module shows (a worklist, a review's ``review.csv``): the rows, or one line that
says which file is missing or which column it lacks. No qt, no slicer."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from AnomalyScoutLib.errors import ResultsError

__all__ = ["read_csv_rows"]


def read_csv_rows(path: str | Path, columns: Sequence[str], kind: str) -> list[dict[str, str]]:
    """The rows of the CSV at ``path`` as dicts, in file order; ``kind`` names the file in messages.

    Raises:
        ResultsError: there is no file at ``path``, or it lacks one of ``columns``.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as stream:
            reader = csv.DictReader(stream)
            missing = [c for c in columns if c not in (reader.fieldnames or ())]
            if missing:
                raise ResultsError(f"{path} is not a {kind}: it has no column {', '.join(missing)}")
            return list(reader)
    except FileNotFoundError as error:
        raise ResultsError(f"no {kind} at {path}") from error
