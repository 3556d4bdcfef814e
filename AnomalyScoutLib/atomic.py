"""Writing one file so that readers see either the old content or the new, never a partial file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from AnomalyScoutLib.errors import ConfigError

__all__ = ["write_bytes_atomic"]


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a temporary file in ``path``'s folder, then rename it over ``path`` in one step.

    The temporary file lives in the same folder so that the rename never crosses a file system (where it would
    stop being atomic). A crash, a full disk or Ctrl-C leaves the previous file (or none) in place.

    Raises:
        ConfigError: the folder does not exist or cannot be written (full disk, permissions).
    """
    path = Path(path)
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise ConfigError(f"cannot write {path}: {error.strerror or error}") from error
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        if isinstance(error, OSError):
            raise ConfigError(f"cannot write {path}: {error.strerror or error}") from error
        raise
