"""A model file part's stored settings (the anomaly-map head's, the denoiser's): read strictly.

A part is stored as ``metadata[KEY] = {"config": {...}, "training": {...}}`` beside its weights. Its settings
are a frozen dataclass; reading them refuses unknown keys (a file from a newer version, or a typo) and any
other shape of entry with one line that names the part, rather than building a network that does not match
its weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, TypeVar

from AnomalyScoutLib.errors import ConfigError

__all__ = ["part_from_metadata", "settings_from_dict"]

Settings = TypeVar("Settings")
Part = TypeVar("Part")


def settings_from_dict(cls: type[Settings], data: Mapping[str, Any], part: str) -> Settings:
    """``cls(**data)``, refusing keys that are not fields of ``cls``: ``ConfigError`` naming ``part``."""
    unknown = sorted(set(data) - {f.name for f in fields(cls)})  # type: ignore[arg-type]
    if unknown:
        raise ConfigError(f"unknown {part} settings: {', '.join(unknown)}")
    return cls(**data)


def part_from_metadata(info: Any, part: str, build: Callable[[Mapping[str, Any]], Part]) -> Part:
    """``build(info["config"])``, a fresh part from its model file entry (weights loaded by the caller).

    Raises:
        ConfigError: the entry is not ``{"config": {...}, ...}``, or its settings are not valid.
    """
    if not isinstance(info, Mapping) or not isinstance(info.get("config"), Mapping):
        raise ConfigError(f'the {part} entry must be {{"config": {{...}}, ...}}')
    try:
        return build(info["config"])
    except TypeError as error:
        raise ConfigError(str(error)) from None
