"""Writing files so that readers see either the old content or the new, never a partial file.

Every output of AnomalyScout (volumes, model files, reports, pictures) goes through here: the data are
written to a temporary name in the destination's own folder (so the final rename never crosses a file
system, where it would stop being atomic) and renamed over the destination only once complete. A crash, a
full disk or Ctrl-C leaves the previous file (or none) in place."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from AnomalyScoutLib.errors import ConfigError

__all__ = ["atomic_destination", "write_bytes_atomic"]


def _default_file_mode() -> int:
    """The mode an ordinary ``open(path, "w")`` would give: 0o666 less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_destination(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` when the block completes.

    ``suffix`` lets writers that choose a format from the file name (SimpleITK) see the right extension. The
    temporary file gets the permissions an ordinary new file would have (``mkstemp`` alone makes it private).

    Raises:
        ConfigError: the folder does not exist or cannot be written (full disk, permissions).
    """
    path = Path(path)
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as error:
        raise ConfigError(f"cannot write {path}: {error.strerror or error}") from error
    os.close(handle)
    try:
        os.chmod(temporary, _default_file_mode())
        yield Path(temporary)
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        if isinstance(error, OSError):
            raise ConfigError(f"cannot write {path}: {error.strerror or error}") from error
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_destination`)."""
    with atomic_destination(path) as temporary:
        temporary.write_bytes(data)
