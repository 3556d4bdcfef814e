"""Writing files so that readers see either the old content or the new, never a partial file.

Every output of AnomalyScout (volumes, model files, reports, pictures) goes through here: the data are
written to a temporary name in the destination's own folder (so the final rename never crosses a file
system, where it would stop being atomic) and renamed over the destination only once complete. A crash, a
full disk or Ctrl-C leaves the previous file (or none) in place. The data are flushed to the disk (``fsync``)
before the rename and the rename itself after it, so that a power cut cannot leave the new name pointing at
data that never reached the disk.

Temporary files and folders are created with the mode an ordinary ``open``/``mkdir`` would give (the OS
applies the umask), never made private first and widened later: reading the umask means changing it for a
moment, for every thread of the process (Slicer runs many)."""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

from AnomalyScoutLib.errors import ConfigError

__all__ = ["atomic_destination", "create_unique", "fsync_path", "write_bytes_atomic"]


def create_unique(folder: Path, prefix: str, suffix: str = "", *, directory: bool = False) -> Path:
    """Create a new, uniquely named empty file (or folder) in ``folder`` and return its path.

    Unlike :func:`tempfile.mkstemp`/``mkdtemp`` (mode 0600/0700), the new entry gets the permissions an
    ordinary new file (0666) or folder (0777) gets, less the umask: the OS applies it at creation, so the
    umask is never read (``os.umask`` can only be read by setting it, process-wide).

    Raises:
        OSError: the folder does not exist or cannot be written.
    """
    while True:
        path = folder / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            if directory:
                os.mkdir(path, 0o777)
            else:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return path


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a file's data, or a folder's entries (its renames), to the disk.

    Windows cannot open a folder to flush it (NTFS journals its renames): folders are skipped there.
    """
    if os.path.isdir(path):
        if sys.platform == "win32":
            return
        descriptor = os.open(path, os.O_RDONLY)
        try:
            with contextlib.suppress(OSError):  # some network file systems refuse to flush a folder
                os.fsync(descriptor)
        finally:
            os.close(descriptor)
        return
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_destination(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` when the block completes.

    ``suffix`` lets writers that choose a format from the file name (SimpleITK) see the right extension. The
    temporary file gets the permissions an ordinary new file would have (see :func:`create_unique`).

    Raises:
        ConfigError: the folder does not exist or cannot be written (full disk, permissions).
    """
    path = Path(path)
    try:
        temporary = create_unique(path.parent, f".{path.name}.", suffix)
    except OSError as error:
        raise ConfigError(f"cannot write {path}: {error.strerror or error}") from error
    try:
        yield temporary
        fsync_path(temporary)
        os.replace(temporary, path)
        fsync_path(path.parent)
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
