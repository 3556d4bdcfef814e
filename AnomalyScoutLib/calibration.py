"""Turning raw anomaly scores into percentiles of normal anatomy and flags at a chosen false-positive rate.

A raw residual score means little on its own: the pelvis and the lung bases reconstruct worse than the
mid-abdomen even when they are normal. Calibration therefore scores held-out **normal** volumes and stores,
per slice-position bin, the distribution of their slice scores (as a quantile function at fixed levels),
plus the distribution of their case scores. A new slice's percentile is its rank among normal slices from
the same part of the body, and it is flagged when it exceeds the ``1 - fpr`` quantile, so on normal data
about ``fpr`` of slices are flagged.

Calibrations are stored in the model file's metadata (``"calibration"``) per reconstruction mode and score
method, because each changes the score's scale, with the slice placement their bins were made with
(``"placement"``: ``"anatomy"`` or ``"index"``; calibrations older than the field were all made by index).
A run that places slices the other way gets one warning (:func:`placement_mismatch`): its slices would be
compared with the normal slices of another part of the body. A bin with fewer than ``min_count`` normal
slices borrows the slices of its neighbours. Without a calibration, :func:`self_calibrated` ranks slices
against the same case's own median and spread instead (a documented, weaker fallback that assumes most slices
of the case are normal).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from AnomalyScoutLib.errors import ConfigError, ModelFileError
from AnomalyScoutLib.scoring import ScoreConfig

__all__ = [
    "ATLAS_CALIBRATION_KEY",
    "DENOISER_CALIBRATION_KEY",
    "CALIBRATION_VERSION",
    "Calibration",
    "CalibratedScores",
    "ModeCalibration",
    "ScoreDistribution",
    "calibration_key",
    "calibration_settings",
    "check_fpr",
    "combine_opinions",
    "exceedance",
    "fit_mode_calibration",
    "placement_mismatch",
    "self_calibrated",
]

CALIBRATION_VERSION = 1
#: Where the position atlas's normal score distributions are filed (its score is the same in every mode).
ATLAS_CALIBRATION_KEY = "atlas"
#: Where the denoiser's normal score distributions are filed (its score, too, is the same in every mode).
DENOISER_CALIBRATION_KEY = "denoiser"
#: Slice placements a calibration can be made with (``position.placement.resolve_method``).
_PLACEMENTS: tuple[str, ...] = ("anatomy", "index")
#: Quantile levels stored per distribution (every 0.5 %).
LEVELS = np.linspace(0.0, 1.0, 201)


def check_fpr(fpr: float) -> float:
    """The false-positive rate must be a probability strictly between 0 and 0.5."""
    if not (isinstance(fpr, (int, float)) and 0.0 < float(fpr) < 0.5):
        raise ConfigError(f"false-positive rate must be in (0, 0.5), got {fpr!r}")
    return float(fpr)


def calibration_key(mode: str, method: str) -> str:
    """Calibrations are filed by reconstruction mode and score method, e.g. ``"accurate/topk"``."""
    return f"{mode}/{method}"


def calibration_settings(score_config: Mapping[str, Any], steps: int) -> dict[str, Any]:
    """What a calibration depends on besides the mode: the score definition and the optimisation steps. A
    stored calibration is used only for a run with exactly these settings."""
    return {**score_config, "steps": steps}


@dataclass(frozen=True)
class ScoreDistribution:
    """The quantile function of normal scores at :data:`LEVELS`, and how many scores it was made of."""

    quantiles: tuple[float, ...]
    count: int

    @classmethod
    def fit(cls, scores: np.ndarray) -> ScoreDistribution:
        scores = np.asarray(scores, dtype=np.float64)
        scores = scores[np.isfinite(scores)]
        if scores.size == 0:
            raise ConfigError("cannot calibrate from zero finite normal scores")
        return cls(tuple(float(q) for q in np.quantile(scores, LEVELS)), int(scores.size))

    def percentile(self, scores: np.ndarray) -> np.ndarray:
        """Percent of normal scores below each score (0 below the smallest, 100 above the largest)."""
        return 100.0 * np.interp(np.asarray(scores, dtype=np.float64), self.quantiles, LEVELS)

    def threshold(self, fpr: float) -> float:
        """The score above which a normal sample lies with probability ``fpr``."""
        return float(np.interp(1.0 - fpr, LEVELS, self.quantiles))

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "quantiles": [round(q, 7) for q in self.quantiles]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScoreDistribution:
        quantiles = tuple(float(q) for q in data["quantiles"])
        if len(quantiles) != len(LEVELS) or any(b < a for a, b in zip(quantiles, quantiles[1:])):
            raise ValueError(f"expected {len(LEVELS)} non-decreasing quantiles")
        return cls(quantiles, int(data["count"]))


@dataclass(frozen=True)
class CalibratedScores:
    """Per-slice percentiles, thresholds and flags, and the same for the case.

    ``exceedance`` is each slice's score over its threshold, the largest over the opinions when several are
    combined: above 1 exactly where ``flagged``, so it ranks slices the way the flags judge them (a reviewer's
    risk) whichever opinion saw them. ``opinion`` names, per slice, the opinion that exceedance is from (None
    when one opinion judged alone)."""

    percentile: np.ndarray
    threshold: np.ndarray
    flagged: np.ndarray
    case_percentile: float
    case_threshold: float
    case_flagged: bool
    exceedance: np.ndarray
    opinion: np.ndarray | None = None


@dataclass(frozen=True)
class ModeCalibration:
    """Normal score distributions for one mode and score method: per position bin, plus case scores."""

    bins: tuple[ScoreDistribution, ...]
    case: ScoreDistribution
    score_config: Mapping[str, Any]
    n_cases: int
    #: How the normal slices were placed into the bins (``position.placement``): "anatomy" or "index".
    placement: str = "index"

    def bin_of(self, positions: np.ndarray) -> np.ndarray:
        """Bin index of relative slice positions in [0, 1] (equal-width; outside values go to the ends)."""
        n = len(self.bins)
        return np.clip(np.floor(np.asarray(positions, dtype=np.float64) * n).astype(int), 0, n - 1)

    def apply(
        self, scores: np.ndarray, positions: np.ndarray, case_score: float, fpr: float
    ) -> CalibratedScores:
        fpr = check_fpr(fpr)
        scores = np.asarray(scores, dtype=np.float64)
        bins = self.bin_of(positions)
        percentile = np.empty_like(scores)
        threshold = np.empty_like(scores)
        for b in np.unique(bins):
            where = bins == b
            percentile[where] = self.bins[b].percentile(scores[where])
            threshold[where] = self.bins[b].threshold(fpr)
        case_threshold = self.case.threshold(fpr)
        return CalibratedScores(
            percentile=percentile,
            threshold=threshold,
            flagged=scores > threshold,
            case_percentile=float(self.case.percentile(np.array([case_score]))[0]),
            case_threshold=case_threshold,
            case_flagged=bool(case_score > case_threshold),
            exceedance=exceedance(scores, threshold),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "n_bins": len(self.bins),
            "n_cases": self.n_cases,
            "placement": self.placement,
            "score_config": dict(self.score_config),
            "bins": [b.to_json() for b in self.bins],
            "case": self.case.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModeCalibration:
        bins = tuple(ScoreDistribution.from_json(b) for b in data["bins"])
        if not bins or len(bins) != int(data["n_bins"]):
            raise ValueError("n_bins does not match the stored bins")
        placement = str(data.get("placement", "index"))
        if placement not in _PLACEMENTS:
            raise ValueError(f"unknown placement {placement!r}")
        return cls(
            bins,
            ScoreDistribution.from_json(data["case"]),
            dict(data["score_config"]),
            int(data["n_cases"]),
            placement,
        )


def fit_mode_calibration(
    slice_scores: Sequence[np.ndarray],
    slice_positions: Sequence[np.ndarray],
    case_scores: Sequence[float],
    score_config: Mapping[str, Any],
    n_bins: int = 10,
    min_count: int = 50,
    placement: str = "index",
) -> ModeCalibration:
    """Fit the per-bin distributions from the slice scores and positions of normal volumes (one array each).

    A bin with fewer than ``min_count`` slices pools its neighbours until it has enough. ``placement`` says
    how the positions were made (``"anatomy"`` or ``"index"``) and is stored with the bins.
    """
    if n_bins < 1 or min_count < 1:
        raise ConfigError("n_bins and min_count must be at least 1")
    if placement not in _PLACEMENTS:
        raise ConfigError(f"placement must be one of {', '.join(_PLACEMENTS)}, got {placement!r}")
    if len(slice_scores) != len(slice_positions) or len(slice_scores) != len(case_scores) or not case_scores:
        raise ConfigError(
            "calibration needs one score array, position array and case score per normal volume"
        )
    scores = np.concatenate([np.asarray(s, dtype=np.float64) for s in slice_scores])
    positions = np.concatenate([np.asarray(p, dtype=np.float64) for p in slice_positions])
    if scores.shape != positions.shape:
        raise ConfigError("every normal slice needs a score and a position")
    bin_index = np.clip(np.floor(positions * n_bins).astype(int), 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        radius = 0
        while True:
            pooled = scores[np.abs(bin_index - b) <= radius]
            if pooled.size >= min_count or radius >= n_bins:
                break
            radius += 1
        bins.append(ScoreDistribution.fit(pooled))
    return ModeCalibration(
        tuple(bins),
        ScoreDistribution.fit(np.asarray(case_scores)),
        dict(score_config),
        len(case_scores),
        placement,
    )


def placement_mismatch(calibration: ModeCalibration | None, placement: str) -> str | None:
    """One warning line when a run places its slices (``placement``) unlike the calibration's bins, else None.

    Typical case: a regressor attached to a model calibrated by index. The thresholds then belong to other
    parts of the body than the slices compared with them, until the model is calibrated again.
    """
    if calibration is None or calibration.placement == placement:
        return None
    return (
        f"this model's calibration was made with {calibration.placement} positions but this run places "
        f"slices by {placement}: its per-position thresholds may belong to other parts of the body; "
        f"recalibrate with `anomalyscout calibrate` (it places by {placement} too) or score with "
        f"--position {calibration.placement}"
    )


@dataclass(frozen=True)
class Calibration:
    """All calibrations of a model, keyed by :func:`calibration_key`; lives in ``metadata["calibration"]``."""

    modes: Mapping[str, ModeCalibration]
    default_fpr: float = 0.01

    def get(self, mode: str, method: str) -> ModeCalibration | None:
        return self.modes.get(calibration_key(mode, method))

    def for_run(self, mode: str, score: ScoreConfig, steps: int) -> ModeCalibration | None:
        """The calibration a run may use: filed under its mode and score method *and* made with exactly its
        :func:`calibration_settings` (score definition and optimisation steps), or ``None``.

        Every user of a stored calibration (``score``, ``rank``, the benchmark) asks here, so that none of
        them can compare the wrong settings (``rank`` once compared them without the steps and never matched).
        """
        found = self.get(mode, score.key())
        if found is None or dict(found.score_config) != calibration_settings(score.as_dict(), steps):
            return None
        return found

    def why_not_for_run(self, mode: str, score: ScoreConfig, steps: int) -> str:
        """One line for a warning when :meth:`for_run` gives ``None``: missing, or other settings."""
        found = self.get(mode, score.key())
        if found is None:
            return f"the model has no calibration for mode {mode!r} and score {score.key()!r}"
        return (
            f"the model was calibrated with {dict(found.score_config)}, not with this run's "
            f"{calibration_settings(score.as_dict(), steps)}"
        )

    def with_mode(self, key: str, calibration: ModeCalibration) -> Calibration:
        return Calibration({**self.modes, key: calibration}, self.default_fpr)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": CALIBRATION_VERSION,
            "default_fpr": self.default_fpr,
            "modes": {key: value.to_json() for key, value in sorted(self.modes.items())},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Calibration:
        """Read a stored calibration; ``None`` (an uncalibrated model) gives an empty one."""
        if data is None:
            return cls({})
        try:
            if int(data["version"]) != CALIBRATION_VERSION:
                raise ModelFileError(f"calibration version {data['version']} is not supported (expected 1)")
            modes = {str(k): ModeCalibration.from_json(v) for k, v in data["modes"].items()}
            return cls(modes, check_fpr(float(data.get("default_fpr", 0.01))))
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f"the model's calibration metadata is malformed: {error}") from error


def combine_opinions(first: CalibratedScores, second: CalibratedScores) -> CalibratedScores:
    """Two calibrated opinions on the same slices, each applied at *half* the false-positive rate, as one: a
    slice (and the case) is flagged when either flags it, so on normal data about the full rate is flagged,
    and its percentile and exceedance are the larger of the two (the threshold shown stays the first
    opinion's)."""
    return CalibratedScores(
        percentile=np.fmax(first.percentile, second.percentile),
        threshold=first.threshold,
        flagged=first.flagged | second.flagged,
        case_percentile=float(np.fmax(first.case_percentile, second.case_percentile)),
        case_threshold=first.case_threshold,
        case_flagged=first.case_flagged or second.case_flagged,
        exceedance=np.fmax(first.exceedance, second.exceedance),
    )


def exceedance(scores: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """``scores / threshold`` (1 = the flag threshold); NaN where the score is."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(scores, dtype=np.float64) / np.asarray(threshold, dtype=np.float64)


def self_calibrated(scores: np.ndarray, case_score: float, fpr: float) -> CalibratedScores:
    """Fallback without a stored calibration: rank slices against the case's own median and MAD.

    Percentiles come from a normal approximation of the robust z-score; slices above the ``1 - fpr`` normal
    quantile are flagged. The case cannot be judged against normals this way: its percentile is NaN and it is
    never flagged.
    """
    fpr = check_fpr(fpr)
    scores = np.asarray(scores, dtype=np.float64)
    finite = scores[np.isfinite(scores)]
    median = float(np.median(finite)) if finite.size else 0.0
    spread = 1.4826 * float(np.median(np.abs(finite - median))) if finite.size else 0.0
    spread = spread if spread > 0 else max(abs(median) * 1e-3, 1e-12)
    z_limit = NormalDist().inv_cdf(1.0 - fpr)
    z = (scores - median) / spread
    percentile = np.array([100.0 * NormalDist().cdf(v) if math.isfinite(v) else math.nan for v in z])
    threshold = np.full_like(scores, median + z_limit * spread)
    flagged = scores > threshold
    return CalibratedScores(
        percentile, threshold, flagged, math.nan, math.nan, False, exceedance(scores, threshold)
    )
