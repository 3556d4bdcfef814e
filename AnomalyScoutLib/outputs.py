"""Writing a run's output folder all at once, and large volumes without holding them in memory.

Two promises of the score contract (``docs/design.md``) live here:

* **Atomic folder**: every file is written into a hidden temporary folder next to the output folder (same file
  system, so a rename is atomic) and moved in only when the whole run has succeeded (:class:`AtomicOutputDir`
  says how, case by case). A failed or cancelled run removes the temporary folder and leaves the output folder
  exactly as it was; a killed one leaves it to the next run to remove.
* **Bounded memory**: a 512x512x600 float32 map is 600 MB. :class:`NrrdVolumeWriter` lays the NRRD file out
  on disk first; the scoring loop stores each batch as whole z slices with one plain write
  (:meth:`~NrrdVolumeWriter.write_slices`), or, where a batch is not a block of the file's slices, through a
  memory map of the voxels; :meth:`~NrrdVolumeWriter.release_pages` puts each batch on disk and hands mapped
  pages back to the operating system so they stop counting against the process's resident memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import mmap
import os
import re
import secrets
import shutil
import socket
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import psutil

from AnomalyScoutLib.atomic import create_unique, fsync_path
from AnomalyScoutLib.errors import ConfigError

__all__ = ["AtomicOutputDir", "NrrdVolumeWriter", "nrrd_header", "remove_stale_staging"]


class AtomicOutputDir:
    """A context manager that collects output files in a temporary folder and moves them into place on commit.

    Example:
        >>> with AtomicOutputDir(Path("results/case1")) as out:
        ...     (out.staging / "scores.csv").write_text("...")
        ...     written = out.commit()

    Leaving the block without :meth:`commit` (an exception, a cancellation) deletes everything written so far.

    How the commit moves the results in, from the strongest promise to the weakest:

    * the output folder does not exist: the staging folder is renamed to it, one atomic step;
    * it exists and holds nothing but files this run replaces (an earlier run's results, or nothing: the
      Slicer module creates it first): the two folders are swapped whole, atomically with Linux's
      ``renameat2(RENAME_EXCHANGE)``, elsewhere by two renames during which the folder is briefly absent
      (never a mix of old and new files). The folder keeps its permissions;
    * it holds anything else (the user's own files, subfolders): each file is replaced on its own
      (``os.replace``, each atomic), because swapping the folder would have to move or relink things that are
      not ours. A crash in the middle of that loop can leave some new and some old files.

    A run killed outright (SIGKILL, the out-of-memory killer, a crash) cannot delete its staging folder; the
    next run of the same output removes it (see :func:`remove_stale_staging`).
    """

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        out = Path(out_dir).absolute()
        # a link to a folder elsewhere: stage next to the real folder (same file system) and keep the link
        self.out_dir = out.resolve() if out.is_symlink() else out
        self._staging: Path | None = None

    @property
    def staging(self) -> Path:
        if self._staging is None:
            raise RuntimeError("AtomicOutputDir is used outside its `with` block")
        return self._staging

    def __enter__(self) -> AtomicOutputDir:
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ConfigError(f"output folder {self.out_dir} exists and is not a folder")
        try:
            self.out_dir.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_staging(self.out_dir)
            self._staging = create_unique(self.out_dir.parent, _staging_prefix(self.out_dir), directory=True)
        except OSError as error:
            raise ConfigError(
                f"cannot write the output folder {self.out_dir}: {error.strerror or error}"
            ) from error
        return self

    def commit(self) -> dict[str, Path]:
        """Move every staged file into the output folder; returns ``{file name: final path}``."""
        staging = self.staging
        names = sorted(p.name for p in staging.iterdir())
        try:
            for name in names:
                fsync_path(staging / name)
            fsync_path(staging)
            if not self.out_dir.exists():
                os.rename(staging, self.out_dir)  # one atomic step when the folder is new
            elif not (_only_files_named(self.out_dir, names) and self._swap_in(staging)):
                for name in names:
                    os.replace(staging / name, self.out_dir / name)
                staging.rmdir()
            fsync_path(self.out_dir)
            fsync_path(self.out_dir.parent)
        except OSError as error:
            raise ConfigError(
                f"cannot move the results into {self.out_dir}: {error.strerror or error}"
            ) from error
        self._staging = None
        return {name: self.out_dir / name for name in names}

    def _swap_in(self, staging: Path) -> bool:
        """Put ``staging`` in place of the output folder and delete the old one; False if the system refused
        before anything changed (e.g. a folder in use on Windows), so the caller replaces file by file."""
        os.chmod(staging, stat.S_IMODE(self.out_dir.stat().st_mode))
        if _exchange(staging, self.out_dir):
            retired = staging  # now holds the previous results
        else:
            retired = self.out_dir.parent / f"{_staging_prefix(self.out_dir)}{secrets.token_hex(4)}"
            try:
                os.rename(self.out_dir, retired)
            except OSError:
                return False
            try:
                os.rename(staging, self.out_dir)
            except OSError:
                os.rename(retired, self.out_dir)
                raise
        shutil.rmtree(retired, ignore_errors=True)
        return True

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None


def _only_files_named(folder: Path, names: Sequence[str]) -> bool:
    """Whether every entry of ``folder`` is a plain file (not a link, not a folder) among ``names``."""
    with os.scandir(folder) as entries:
        return all(e.name in names and e.is_file(follow_symlinks=False) for e in entries)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step where the system can (Linux 3.15+ with glibc 2.28+, on file
    systems that support ``RENAME_EXCHANGE``); False elsewhere, with nothing changed."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(b))


@functools.lru_cache(maxsize=1)
def _machine_tag() -> str:
    """Hostname and pid namespace, hashed: keeps a process on another machine sharing the folder, or in
    another container, from being judged by this machine's process table."""
    namespace = ""
    with contextlib.suppress(OSError):
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    return hashlib.sha1(f"{socket.gethostname()}|{namespace}".encode()).hexdigest()[:8]


def _owner() -> tuple[int, int, str]:
    """This process as a staging folder's owner: pid, start time (s since the epoch) and machine tag.

    The start time tells a reused pid from the owner. Not cached: a forked worker is another owner.
    """
    return os.getpid(), int(psutil.Process().create_time()), _machine_tag()


def _staging_prefix(out_dir: Path) -> str:
    pid, started, machine = _owner()
    return f".{out_dir.name}{_PARTIAL}{pid}-{started}-{machine}-"


_PARTIAL = ".partial-"


def _owner_is_gone(pid: int, started: int) -> bool:
    """True only when no process ``pid`` runs, or the one that does started at another time (a reused pid).

    A process that exists but cannot be inspected (another user's) counts as alive. A zombie (finished, not
    yet reaped by its parent) also counts as alive: wait for a killed worker before cleaning up after it.
    """
    try:
        return abs(psutil.Process(pid).create_time() - started) > 1.0
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def remove_stale_staging(out_dir: str | os.PathLike[str]) -> list[Path]:
    """Delete the staging folders of ``out_dir`` whose writer was killed before it could delete them.

    Only folders this code made for this very output (``.NAME.partial-PID-START-MACHINE-XXXXXXXX`` next to
    it) are considered, and only those whose owner ran on this machine and no longer runs; a run still
    writing (here or on another machine sharing the folder), or anything else, is left alone.
    ``AtomicOutputDir`` calls this on entry; a front end that kills its worker (the Slicer module's cancel)
    calls it after the worker has exited. Returns the folders removed.
    """
    out = Path(out_dir).absolute()
    pattern = re.compile(re.escape(f".{out.name}{_PARTIAL}") + r"(\d+)-(\d+)-([0-9a-f]{8})-[0-9a-f]{8}")
    machine = _machine_tag()
    removed = []
    try:
        entries = list(os.scandir(out.parent))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or match[3] != machine or not entry.is_dir(follow_symlinks=False):
            continue
        if _owner_is_gone(int(match[1]), int(match[2])):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def _vector(values: Sequence[float]) -> str:
    return "(" + ",".join(f"{float(v):.17g}" for v in values) + ")"


def nrrd_header(
    shape_zyx: Sequence[int],
    spacing_xyz: Sequence[float],
    origin_xyz: Sequence[float],
    direction: Sequence[float],
) -> bytes:
    """The text header of a raw little-endian float32 NRRD file in SimpleITK's LPS physical space.

    Each NRRD "space direction" is a column of the row-major 3x3 ``direction`` scaled by that axis' spacing;
    values are written with 17 significant digits so that spacing, origin and direction read back exactly.
    """
    if len(shape_zyx) != 3 or len(spacing_xyz) != 3 or len(origin_xyz) != 3 or len(direction) != 9:
        raise ValueError("nrrd_header needs a 3-D shape, spacing, origin and a 9-value direction")
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    axes = [matrix[:, i] * float(spacing_xyz[i]) for i in range(3)]
    size_xyz = list(reversed([int(s) for s in shape_zyx]))
    lines = [
        "NRRD0004",
        "# written by AnomalyScout; format: http://teem.sourceforge.net/nrrd/format.html",
        "type: float",
        "dimension: 3",
        "space: left-posterior-superior",
        "sizes: " + " ".join(str(s) for s in size_xyz),
        "space directions: " + " ".join(_vector(a) for a in axes),
        "kinds: domain domain domain",
        "endian: little",
        "encoding: raw",
        "space origin: " + _vector(origin_xyz),
    ]
    return ("\n".join(lines) + "\n\n").encode("ascii")


class NrrdVolumeWriter:
    """A float32 NRRD file on disk, filled in place: whole z slices with :meth:`write_slices`, any voxels
    through :attr:`array_zyx` (a memory map, made on first use).

    The file starts as zeros (sparse on most systems), so voxels never written are 0 — which is what the
    residual map wants outside the body. Call :meth:`close` before the file is moved or read by someone else.
    Prefer :meth:`write_slices` where the data are whole slices: a plain write costs less CPU than filling
    fresh memory-mapped pages (a page fault per 4 KB) and does not count against the resident memory.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        shape_zyx: Sequence[int],
        spacing_xyz: Sequence[float],
        origin_xyz: Sequence[float],
        direction: Sequence[float],
    ) -> None:
        self.path = Path(path)
        self.shape_zyx = tuple(int(s) for s in shape_zyx)
        if any(s <= 0 for s in self.shape_zyx):
            raise ValueError(f"NRRD volume shape must be positive, got {self.shape_zyx}")
        header = nrrd_header(self.shape_zyx, spacing_xyz, origin_xyz, direction)
        self._data_offset = len(header)
        nbytes = int(np.prod(self.shape_zyx)) * 4
        with open(self.path, "wb") as handle:
            handle.write(header)
            handle.truncate(len(header) + nbytes)
        self._file = open(self.path, "r+b")  # noqa: SIM115 - kept open until close()
        self._mmap: mmap.mmap | None = None
        self._array: np.ndarray | None = None
        self._closed = False

    @property
    def array_zyx(self) -> np.ndarray | None:
        """The voxels as a writable memory map (``None`` once closed)."""
        if self._closed:
            return None
        if self._array is None:
            self._mmap = mmap.mmap(self._file.fileno(), 0)
            self._array = np.ndarray(self.shape_zyx, dtype="<f4", buffer=self._mmap, offset=self._data_offset)
        return self._array

    def write_slices(self, z0: int, slab_zyx: np.ndarray) -> None:
        """Store ``slab_zyx`` (n, y, x) as the file's z slices ``z0 : z0 + n``, with one plain write."""
        slab = np.ascontiguousarray(slab_zyx, dtype="<f4")
        if (
            slab.ndim != 3
            or slab.shape[1:] != self.shape_zyx[1:]
            or not 0 <= z0 <= self.shape_zyx[0] - len(slab)
        ):
            raise ValueError(
                f"slices of shape {slab.shape} at z {z0} do not fit a volume of {self.shape_zyx}"
            )
        self._file.seek(self._data_offset + z0 * slab[0].nbytes)
        self._file.write(memoryview(slab).cast("B"))

    def release_pages(self) -> None:
        """Write what was written to disk and drop memory-mapped pages from this process's resident set."""
        if self._mmap is not None:
            self._mmap.flush()
            if hasattr(mmap, "MADV_DONTNEED"):
                self._mmap.madvise(mmap.MADV_DONTNEED)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Flush, unmap and close. Views of :attr:`array_zyx` held elsewhere must be dropped first."""
        if self._closed:
            return
        self._closed = True
        self._array = None
        if self._mmap is not None:
            self._mmap.flush()
            self._mmap.close()
        self._file.close()
