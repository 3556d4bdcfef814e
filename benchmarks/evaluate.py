"""Run a method on a track's data and turn its output into the reported numbers, the same way for all.

Definitions (also in ``docs/benchmarks.md``):

- **Per anomaly type T**, the evaluation set is the slices of the cases of type T together with the
  slices of the normal control cases. A slice is positive when any of its model-grid pixels is
  anomalous; the untouched slices of an anomalous case count as negatives (they are normal anatomy).
- **Slice AUROC / AP** over those slices. **Case AUROC / AP** (MOOD's sample level): one score per
  case, the maximum of its slice scores; positives are the cases of type T.
- **Pixel AP** (MOOD's pixel level): average precision over all model-grid pixels of the evaluation
  set, maps clipped to [0, 1]. **Best Dice** (BMAD): the Dice of the thresholded maps against the
  truth at the best threshold.
- **overall**: all types together with the controls.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from AnomalyScoutLib import metrics
from AnomalyScoutLib.atomic import atomic_destination
from benchmarks.detectors import Detection, Detector
from benchmarks.slices import SliceSet

__all__ = [
    "MethodRun",
    "case_scores",
    "case_slices",
    "detection_metrics",
    "method_entry",
    "paired_case_bootstrap",
    "run_method",
]

#: Per case id: the labels and scores of its slices (one method's view of one case).
CaseSlices = dict[int, tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class MethodRun:
    """A method's detection on a test set, with how long fitting and detecting took (same clock for all)."""

    name: str
    detection: Detection
    fit_seconds: float
    detect_seconds: float

    @property
    def slices_per_second(self) -> float:
        return len(self.detection.slice_scores) / max(self.detect_seconds, 1e-9)

    def subset(self, keep: np.ndarray) -> MethodRun:
        """The same run restricted to some slices; detection time is scaled to the kept share of slices, so
        the subset reports the whole run's slices/s (a subset is not faster to score per slice)."""
        maps = None if self.detection.maps is None else self.detection.maps[keep]
        scores = self.detection.slice_scores[keep]
        share = len(scores) / max(len(self.detection.slice_scores), 1)
        return MethodRun(self.name, Detection(maps, scores), self.fit_seconds, self.detect_seconds * share)

    def save(self, path: Path) -> None:
        """Cache the run (maps as float16: they are only ranked and thresholded) in one atomic ``.npz``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {
            "scores": self.detection.slice_scores,
            "timing": np.array([self.fit_seconds, self.detect_seconds]),
        }
        if self.detection.maps is not None:
            arrays["maps"] = self.detection.maps.astype(np.float16)
        with atomic_destination(path, suffix=".npz") as temporary, temporary.open("wb") as stream:
            np.savez(stream, **arrays)

    @classmethod
    def load(cls, name: str, path: Path) -> MethodRun:
        with np.load(path) as data:
            maps = data["maps"].astype(np.float32) if "maps" in data else None
            fit_s, detect_s = (float(t) for t in data["timing"])
            return cls(name, Detection(maps, data["scores"]), fit_s, detect_s)


def run_method(detector: Detector, train: SliceSet, test: SliceSet, cache: Path | None = None) -> MethodRun:
    """Fit ``detector`` on ``train`` and detect on ``test``, timing each step with the wall clock.

    Args:
        cache: If given, a finished run is read from / written to this file, so that a track can be rerun
            (e.g. with a newer model) without repeating the methods that did not change. The caller makes
            the name unique to the method's configuration and the data.
    """
    if cache is not None and cache.is_file():
        return MethodRun.load(detector.name, cache)
    start = time.perf_counter()
    detector.fit(train)
    fitted = time.perf_counter()
    detection = detector.detect(test)
    done = time.perf_counter()
    maps_ok = detection.maps is None or detection.maps.shape == test.images.shape
    if not maps_ok or detection.slice_scores.shape != (len(test),):
        raise RuntimeError(f"{detector.name} returned maps or scores of the wrong shape ({len(test)} slices)")
    run = MethodRun(detector.name, detection, fitted - start, done - fitted)
    if cache is not None:
        run.save(cache)
    return run


def case_scores(slices: SliceSet, slice_scores: np.ndarray) -> np.ndarray:
    """One score per case: its most anomalous slice (one bad slice makes a bad case)."""
    out = np.full(len(slices.cases), -np.inf)
    np.maximum.at(out, slices.case, slice_scores)
    return out


def _group_metrics(slices: SliceSet, detection: Detection, keep: np.ndarray) -> dict[str, Any]:
    labels = slices.labels[keep]
    scores = detection.slice_scores[keep]
    sub = slices.subset(keep)
    per_case = case_scores(sub, scores)
    case_labels = np.array([c.anomaly != "normal" for c in sub.cases])
    return {
        "slices": int(keep.sum()),
        "anomalous_slices": int(labels.sum()),
        "cases": len(sub.cases),
        "slice_auroc": metrics.roc_auc(labels, scores),
        "slice_ap": metrics.average_precision(labels, scores),
        "case_auroc": metrics.roc_auc(case_labels, per_case),
        "case_ap": metrics.average_precision(case_labels, per_case),
        **_pixel_metrics(detection.maps, slices.anomaly, keep),
    }


def _pixel_metrics(maps: np.ndarray | None, truth: np.ndarray, keep: np.ndarray) -> dict[str, float | None]:
    """MOOD's pixel AP and BMAD's best Dice over all model-grid pixels of the kept slices (maps clipped
    to [0, 1])."""
    if maps is None:
        return {"pixel_ap": None, "best_dice": None, "best_dice_threshold": None}
    histogram = metrics.VoxelScoreHistogram(low=0.0, high=1.0)
    histogram.add(maps[keep], truth[keep])
    best = histogram.best_dice()
    return {
        "pixel_ap": histogram.average_precision(),
        "best_dice": best.dice,
        "best_dice_threshold": best.threshold,
    }


def detection_metrics(slices: SliceSet, detection: Detection) -> dict[str, dict[str, Any]]:
    """The module docstring's metrics per anomaly type present in ``slices`` and ``"overall"``."""
    kinds = slices.case_anomaly
    types = sorted(set(kinds) - {"normal"})
    if not types or "normal" not in kinds:
        raise ValueError("a test set needs normal control cases and at least one anomaly type")
    result = {t: _group_metrics(slices, detection, (kinds == t) | (kinds == "normal")) for t in types}
    result["overall"] = _group_metrics(slices, detection, np.ones(len(slices), dtype=bool))
    return result


def method_entry(run: MethodRun, slices: SliceSet, evaluated_on: str) -> dict[str, Any]:
    """A method's record in a results file: where it was evaluated, its timings and its metrics."""
    return {
        "evaluated_on": evaluated_on,
        "slices": len(slices),
        "fit_s": round(run.fit_seconds, 2),
        "detect_s": round(run.detect_seconds, 2),
        "slices_per_s": round(run.slices_per_second, 3),
        "metrics": detection_metrics(slices, run.detection),
    }


def case_slices(slices: SliceSet, scores: np.ndarray) -> CaseSlices:
    """A harness method's slice scores grouped by case, beside the slices' labels."""
    labels = slices.labels
    return {int(c): (labels[slices.case == c], scores[slices.case == c]) for c in np.unique(slices.case)}


def paired_case_bootstrap(
    methods: dict[str, CaseSlices], kinds: dict[int, str], types: tuple[str, ...], n_resamples: int = 1000
) -> dict[str, Any]:
    """How much of a difference between methods the test cases can tell.

    95 % intervals of each method's mean slice AUROC over ``types`` (each type's cases against the
    controls, ``kinds[case] == "normal"``), resampling whole *cases* (slices of one case are not
    independent) within each type and among the controls, and of each method's difference from the first
    one on the same resamples.
    """
    names = list(methods)
    cases = np.array(sorted(c for c in kinds if c in methods[names[0]]))
    strata = np.array([kinds[c] for c in cases])

    def mean_auroc(name: str, picked: np.ndarray) -> float:
        aurocs = []
        for kind in types:
            chosen = [methods[name][c] for c in picked if kinds[c] in (kind, "normal")]
            labels = np.concatenate([c[0] for c in chosen])
            aurocs.append(metrics.roc_auc(labels, np.concatenate([c[1] for c in chosen])))
        return float(np.mean(aurocs))

    def interval(statistic: Any) -> list[float]:
        ci = metrics.bootstrap_ci(statistic, cases, n_resamples=n_resamples, strata=strata)
        return [round(ci.low, 4), round(ci.high, 4)]

    return {
        "resamples": n_resamples,
        "unit": "case",
        "mean_type_auroc_ci95": {name: interval(lambda p, n=name: mean_auroc(n, p)) for name in names},
        "difference_from_first_ci95": {
            name: interval(lambda p, n=name: mean_auroc(n, p) - mean_auroc(names[0], p)) for name in names[1:]
        },
    }
