"""The errors AnomalyScout raises on purpose.

Every error a user can cause (a wrong file, a wrong model, a cancelled run) is an
:class:`AnomalyScoutError` whose message names the problem in words a person can act on. The CLI and the
worker print that message on one line and exit with the error's ``exit_code``; anything else is a bug and
is reported as such."""

from __future__ import annotations

__all__ = [
    "AnomalyScoutError",
    "CancelledError",
    "ConfigError",
    "MetricError",
    "ModelFileError",
    "NotCTError",
    "ResultsError",
    "UnreadableVolumeError",
    "VolumeError",
]


class AnomalyScoutError(Exception):
    """Base class: an expected failure with a message meant for the user."""

    exit_code = 1


class ConfigError(AnomalyScoutError):
    """A configuration value or option is invalid."""


class VolumeError(AnomalyScoutError):
    """A volume cannot be used: wrong dimensionality, pixel type, size or values."""


class UnreadableVolumeError(VolumeError):
    """A file or folder cannot be read as an image (missing, corrupt, truncated, unknown format)."""


class NotCTError(VolumeError):
    """The image is readable but is not CT in Hounsfield units (MR/PET modality, 8-bit greyscale, ...)."""


class ModelFileError(AnomalyScoutError):
    """A model file is missing, tampered with, of an unknown version or does not match its configuration."""


class MetricError(AnomalyScoutError):
    """A metric is undefined for the data given (one class only, too few samples, mismatched inputs)."""


class ResultsError(AnomalyScoutError):
    """A run's output folder is missing a file or holds one that does not follow the score contract."""


class CancelledError(AnomalyScoutError):
    """The run was cancelled (SIGINT/SIGTERM); nothing was written."""

    exit_code = 130
