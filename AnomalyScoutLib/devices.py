"""Choosing the torch device: CUDA, then Apple MPS, then CPU.

Everything in AnomalyScout runs on CPU; a GPU only makes it faster. ``"auto"`` therefore never fails, while an
explicit request for a device that is not there fails early with a :class:`ConfigError` instead of a CUDA
traceback deep inside a network.
"""

from __future__ import annotations

import re

import torch

from AnomalyScoutLib.errors import ConfigError

__all__ = ["select_device"]

_SPEC = re.compile(r"^(auto|cpu|mps|cuda)(?::(\d+))?$")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(spec: str = "auto") -> torch.device:
    """Return the torch device named by ``spec``.

    Args:
        spec: ``"auto"`` (CUDA if present, else MPS, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or
            ``"mps"``.

    Raises:
        ConfigError: ``spec`` is not one of the forms above, or names a device this machine does not have.
    """
    match = _SPEC.match(spec.strip().lower()) if isinstance(spec, str) else None
    if match is None:
        raise ConfigError(f"device {spec!r} is not one of auto, cpu, cuda, cuda:N, mps")
    kind, index = match.group(1), match.group(2)
    if index is not None and kind != "cuda":
        raise ConfigError(f"device {spec!r}: only cuda takes an index (cuda:N)")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps":
        if not _mps_available():
            raise ConfigError("device 'mps' requested but Apple MPS is not available on this machine")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} requested but CUDA is not available (torch {torch.__version__})")
    count = torch.cuda.device_count()
    if index is not None and int(index) >= count:
        raise ConfigError(f"device {spec!r} requested but this machine has only {count} CUDA device(s)")
    return torch.device(f"cuda:{index}" if index is not None else "cuda")
