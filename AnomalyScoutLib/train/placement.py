"""How training slices are placed on the anatomical scale: by index, or by anatomy with a body-part regressor.

The generator is conditioned on where a slice lies between the pelvis floor (0) and the lung bases (1). By
index, ``(k + 0.5) / n`` over the scanned range, is right for the phantom (its index *is* that scale) but not
for a real CT that covers only part of it: a liver-only scan would teach the generator that the liver lies
from 0 to 1. With a regressor (``--position-regressor``), the training commands place every volume as
``score`` does (``position.placement.place_and_gate``) and leave out the slices the range gate would not
score.

A placement is recorded (:meth:`TrainingPlacement.record`) in the GAN run's ``training_options.json`` and in
the model file's ``training.placement``, so that a later stage (``train-encoder`` on that GAN, ``train-head``
on that model, a resumed GAN) places alike by default (:func:`recorded_placement`). The regressor is named by
the SHA-256 of its tensors, the same for a regressor file and for a model file that holds it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from AnomalyScoutLib.errors import ConfigError, ModelFileError
from AnomalyScoutLib.position.network import PositionRegressor

__all__ = ["INDEX", "TrainingPlacement", "load_placement", "recorded_placement", "require_same_placement"]

#: The option that names a regressor file on every training command.
OPTION = "--position-regressor"


@dataclass(frozen=True)
class TrainingPlacement:
    """A regressor to place training slices with (and where it came from), or none: by index.

    Attributes:
        regressor: the body-part regressor; None places by index.
        source: the file it was read from (absolute), None for index.
        regressor_id: SHA-256 of its ``position.*`` tensors, None for index.
    """

    regressor: PositionRegressor | None = None
    source: str | None = None
    regressor_id: str | None = None

    @property
    def method(self) -> str:
        return "index" if self.regressor is None else "anatomy"

    def record(self) -> dict[str, Any]:
        """What a GAN run and a model file record: ``{"method": "index"}`` or the regressor's id and file."""
        if self.regressor is None:
            return {"method": "index"}
        return {"method": "anatomy", "regressor_id": self.regressor_id, "regressor_file": self.source}

    def describe(self) -> str:
        """One line for the commands' progress output."""
        if self.regressor is None:
            return "slices placed by index over each volume's scanned range"
        return f"slices placed by anatomy (regressor {str(self.regressor_id)[:12]} from {self.source})"


#: Placement by index: what every run recorded before placements were recorded, and the default.
INDEX = TrainingPlacement()


def _regressor_id(regressor: PositionRegressor) -> str:
    from AnomalyScoutLib.model_file import tensor_digest
    from AnomalyScoutLib.position.store import regressor_tensors

    return tensor_digest(regressor_tensors(regressor))


def load_placement(path: str | os.PathLike[str]) -> TrainingPlacement:
    """Placement by anatomy with the regressor in ``path``: a ``position-train`` file or a model holding one.

    Raises:
        ConfigError: one line naming the option and the file when it holds no readable regressor.
    """
    try:
        return _read(path)
    except ModelFileError as error:
        raise ConfigError(f"{OPTION}: {error}") from None


def _read(path: str | os.PathLike[str]) -> TrainingPlacement:
    from AnomalyScoutLib.position.store import load_regressor

    regressor, _ = load_regressor(path)
    return TrainingPlacement(regressor, str(Path(path).resolve()), _regressor_id(regressor))


def _name(record: dict[str, Any]) -> str:
    if record.get("method", "index") == "index":
        return "by index"
    return (
        f"by anatomy with regressor {str(record.get('regressor_id'))[:12]} ({record.get('regressor_file')})"
    )


def recorded_placement(
    record: dict[str, Any] | None, what: str, held: PositionRegressor | None = None
) -> TrainingPlacement:
    """The placement ``record`` describes (absent: index, as every run made before records), ready to use.

    Args:
        record: a :meth:`TrainingPlacement.record` from a GAN run or a model file, or None.
        what: names the run or file in messages (``"the GAN run RUN"``).
        held: a regressor the caller already has (a model file's own); used when it is the recorded one, so a
            model moved to another machine needs no regressor file.

    Raises:
        ConfigError: the recorded regressor can no longer be read from its file, or that file now holds
            another regressor.
    """
    if not record or record.get("method", "index") == "index":
        return INDEX
    wanted, source = record.get("regressor_id"), str(record.get("regressor_file"))
    if held is not None and _regressor_id(held) == wanted:
        return TrainingPlacement(held, source, wanted)
    try:
        placement = _read(source)
    except ModelFileError as error:
        raise ConfigError(
            f"{what} placed its slices {_name(record)}, which cannot be read now ({error}); "
            f"give {OPTION} FILE"
        ) from None
    if placement.regressor_id != wanted:
        raise ConfigError(
            f"{what} placed its slices {_name(record)}, but that file now holds regressor "
            f"{str(placement.regressor_id)[:12]}; give {OPTION} FILE"
        )
    return placement


def require_same_placement(placement: TrainingPlacement, record: dict[str, Any] | None, what: str) -> None:
    """Refuse ``placement`` where the run must keep the recorded one (a resumed GAN).

    Raises:
        ConfigError: the two place differently.
    """
    recorded = record or INDEX.record()
    if recorded.get("method", "index") == placement.method and (
        placement.method == "index" or recorded.get("regressor_id") == placement.regressor_id
    ):
        return
    raise ConfigError(
        f"{what} was trained with slices placed {_name(recorded)}, not {_name(placement.record())}: "
        "a resumed run keeps its placement (train a new run to change it)"
    )
