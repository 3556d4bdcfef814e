"""A stand-in for :class:`~AnomalyScoutLib.engine.VolumeScorer` in tests of ``engine._calibrate``.

It holds given calibrations and takes the engine's own rules for which opinions are heard and counted
(``second_opinion_keys``, ``opinions``), so that those tests follow the engine when it changes instead of
copying it.
"""

from __future__ import annotations

from collections.abc import Mapping

from AnomalyScoutLib.calibration import Calibration, ModeCalibration, calibration_key
from AnomalyScoutLib.engine import VolumeScorer
from AnomalyScoutLib.scoring import ScoreConfig


class FakeScorer:
    """A ``fast``-mode scorer whose own score is calibrated by ``main`` and each second opinion by
    ``opinions[key]`` (a key it lacks is uncalibrated)."""

    denoising = False  # fast mode: every second opinion is heard
    score_name = "residual"
    second_opinion_keys = VolumeScorer.second_opinion_keys
    opinions = VolumeScorer.opinions

    def __init__(self, main: ModeCalibration, opinions: Mapping[str, ModeCalibration]) -> None:
        self.main, self.opinion_fits = main, dict(opinions)

    def stored_calibration(self) -> Calibration:
        return Calibration({calibration_key("fast", "topk"): self.main, **self.opinion_fits})

    def run_settings(self) -> tuple[str, ScoreConfig, int]:
        return "fast", ScoreConfig(), 0

    def opinion_calibration(self, key: str) -> ModeCalibration | None:
        return self.opinion_fits.get(key)
