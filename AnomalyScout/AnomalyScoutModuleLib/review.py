"""Reviewing a segmentation from Slicer: what is refused before a worker starts, and the list it leaves.

The worker's review job (``--review SEG``, ``docs/worker-protocol.md``) writes ``review.csv`` (one row per
canonical slice: ``slice_index, position, risk, flagged``; the risk is blank where the segmentation grown by
its margin does not reach) next to the score outputs of that region, whose ``scores.json`` holds each slice's
RAS centre. :func:`read_review` joins the two into the rows the panel lists, riskiest first, each with the
centre a click jumps to (``SceneResults.jump_to_slice``, the same jump as the flagged-slice list). Bad input
is one line, found before anything is exported or launched (:func:`check_review_inputs`); a segment that is
empty on the CT's grid is found by the export (``scene.export_segment_mask``). No qt: tested with pytest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from AnomalyScoutLib.errors import ModelFileError, ResultsError, VolumeError
from AnomalyScoutModuleLib.csv_files import read_csv_rows
from AnomalyScoutModuleLib.scene import read_score_report

__all__ = [
    "REVIEW_COLUMNS",
    "ReviewRow",
    "check_review_inputs",
    "read_review",
    "review_summary",
]

#: The columns of ``review.csv`` (``AnomalyScoutLib.segmentation.review``).
REVIEW_COLUMNS = ("slice_index", "position", "risk", "flagged")


@dataclass(frozen=True)
class ReviewRow:
    """One slice the review scored: its risk (score over the calibrated threshold, > 1 flagged) and where a
    click on it jumps."""

    slice_index: int
    position: float
    risk: float
    flagged: bool
    center_ras: tuple[float, float, float]

    def cells(self) -> tuple[str, str, str, str]:
        """The texts of its table row: slice, position, risk, flagged."""
        flag = "yes" if self.flagged else ""
        return (str(self.slice_index), f"{self.position:.3f}", f"{self.risk:.3g}", flag)


def check_review_inputs(volume: Any, segmentation: Any, segment_id: str, model: Path | None) -> None:
    """Refuse, in one line, a review that cannot run: no CT, no segmentation, no segment or no model.

    Raises:
        VolumeError: the CT, the segmentation or its segment is missing.
        ModelFileError: no model is listed.
    """
    if volume is None:
        raise VolumeError("Choose the CT volume to review (Inputs).")
    if segmentation is None:
        raise VolumeError("Choose the segmentation to review.")
    if not segment_id:
        raise VolumeError(f"The segmentation {segmentation.GetName()!r} has no segment chosen: pick one.")
    if model is None:
        raise ModelFileError("No model is listed: add a model file (Inputs) first.")


def _row(raw: dict[str, str], centers: dict[int, tuple[float, float, float]]) -> ReviewRow:
    k = int(raw["slice_index"])
    return ReviewRow(k, float(raw["position"]), float(raw["risk"]), raw["flagged"].strip() == "1", centers[k])


def read_review(out_dir: str | Path) -> tuple[ReviewRow, ...]:
    """The slices in and around the segmentation, riskiest first (slice order among equal risks).

    Slices without a risk are left out: the grown segmentation does not reach them, so their score says
    nothing about it (``review.csv`` leaves the risk blank there). Slices with metal read ``inf`` and come
    first.

    Raises:
        ResultsError: ``review.csv`` or ``scores.json`` is missing or malformed.
    """
    path = Path(out_dir) / "review.csv"
    centers = {s.slice_index: s.center_ras for s in read_score_report(out_dir).slices}
    try:
        raw_rows = read_csv_rows(path, REVIEW_COLUMNS, "review")
        rows = [_row(raw, centers) for raw in raw_rows if raw["risk"].strip()]
    except (ValueError, KeyError) as error:
        raise ResultsError(f"{path} does not match its scores.json ({error!r})") from error
    return tuple(sorted(rows, key=lambda r: (-r.risk, r.slice_index)))


def review_summary(rows: Sequence[ReviewRow]) -> str:
    """The status line after a review: how many slices are at risk, and the riskiest one."""
    if not rows:
        return "Review done: no slice was scored."
    at_risk = [r for r in rows if r.flagged]
    top = rows[0]
    if not at_risk:
        return (
            f"Review done: none of the {len(rows)} slices in and around the segment is at risk "
            f"(highest risk {top.risk:.3g}; flagged above 1)."
        )
    return (
        f"Review done: {len(at_risk)} of {len(rows)} slices in and around the segment at risk; "
        f"riskiest: slice {top.slice_index} (risk {top.risk:.3g})."
    )
