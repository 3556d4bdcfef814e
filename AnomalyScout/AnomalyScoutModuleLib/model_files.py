"""Which ``.safetensors`` files are AnomalyScout models, read from their header alone.

The shipped ``models/`` folder also holds the body-part regressor (``position.safetensors``), which
``anomalyscout attach-position`` puts into a model and which cannot score a CT; listed as a model, it would
fail only after the worker started. A safetensors file begins with the 8-byte little-endian length of a JSON
header whose ``__metadata__`` names what the file is (``anomalyscout`` for a model file), so the module can
tell them apart with the standard library, at load time, before torch is installed.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from pathlib import Path

__all__ = ["MODEL_METADATA_KEY", "is_model_file", "model_files_in"]

#: ``AnomalyScoutLib.model_file.METADATA_KEY``, repeated here: the module must not import the library at load.
MODEL_METADATA_KEY = "anomalyscout"
#: Far above any real header (a model's is a few kB), far below what a broken length could ask for.
_MAX_HEADER_BYTES = 16 * 1024 * 1024


def is_model_file(path: Path) -> bool:
    """Whether ``path`` is a readable safetensors file whose metadata says it is an AnomalyScout model."""
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > _MAX_HEADER_BYTES:
                return False
            header = json.loads(handle.read(length))
    except (OSError, struct.error, ValueError):
        return False
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(metadata, dict) and MODEL_METADATA_KEY in metadata


def model_files_in(folders: Iterable[Path]) -> list[Path]:
    """The model files of ``folders``, sorted by name within each folder, in the folders' order."""
    return [
        path
        for folder in folders
        for path in sorted(Path(folder).glob("*.safetensors"))
        if is_model_file(path)
    ]
