"""Writing a run's output folder all at once, and large volumes without holding them in memory.

Two promises of the score contract (``docs/design.md``) live here:

* **Atomic folder**: every file is written into a hidden temporary folder next to the output folder (same file
  system, so a rename is atomic) and moved in only when the whole run has succeeded. A failed or cancelled run
  removes the temporary folder and leaves the output folder exactly as it was.
* **Bounded memory**: a 512x512x600 float32 map is 600 MB. :class:`NrrdVolumeWriter` lays the NRRD file out
  on disk first and exposes its voxels as a memory map that the scoring loop fills batch by batch;
  :meth:`release_pages` hands written pages back to the operating system so they stop counting against the
  process's resident memory.
"""

from __future__ import annotations

import mmap
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import numpy as np

from AnomalyScoutLib.errors import ConfigError

__all__ = ["AtomicOutputDir", "NrrdVolumeWriter", "nrrd_header"]


class AtomicOutputDir:
    """A context manager that collects output files in a temporary folder and moves them into place on commit.

    Example:
        >>> with AtomicOutputDir(Path("results/case1")) as out:
        ...     (out.staging / "scores.csv").write_text("...")
        ...     written = out.commit()

    Leaving the block without :meth:`commit` (an exception, a cancellation) deletes everything written so far.
    Files already in the output folder that the run does not produce are left alone.
    """

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.out_dir = Path(out_dir).absolute()
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
            self._staging = Path(
                tempfile.mkdtemp(prefix=f".{self.out_dir.name}.partial-", dir=self.out_dir.parent)
            )
            self._staging.chmod(0o777 & ~_current_umask())  # mkdtemp's 0700 would stick to a new folder
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
            if not self.out_dir.exists():
                os.rename(staging, self.out_dir)  # one atomic step when the folder is new
            else:
                for name in names:
                    os.replace(staging / name, self.out_dir / name)
                staging.rmdir()
        except OSError as error:
            raise ConfigError(
                f"cannot move the results into {self.out_dir}: {error.strerror or error}"
            ) from error
        self._staging = None
        return {name: self.out_dir / name for name in names}

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
    """A float32 NRRD file on disk whose voxels are filled in place through :attr:`array_zyx` (a memory map).

    The file starts as zeros (sparse on most systems), so voxels never written are 0 — which is what the
    residual map wants outside the body. Call :meth:`close` before the file is moved or read by someone else.
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
        shape = tuple(int(s) for s in shape_zyx)
        if any(s <= 0 for s in shape):
            raise ValueError(f"NRRD volume shape must be positive, got {shape}")
        header = nrrd_header(shape, spacing_xyz, origin_xyz, direction)
        nbytes = int(np.prod(shape)) * 4
        with open(self.path, "wb") as handle:
            handle.write(header)
            handle.truncate(len(header) + nbytes)
        self._file = open(self.path, "r+b")  # noqa: SIM115 - kept open for the life of the memory map
        self._mmap = mmap.mmap(self._file.fileno(), 0)
        self.array_zyx: np.ndarray | None = np.ndarray(
            shape, dtype="<f4", buffer=self._mmap, offset=len(header)
        )

    def release_pages(self) -> None:
        """Write dirty pages to disk and drop them from this process's resident set (on Linux)."""
        self._mmap.flush()
        if hasattr(mmap, "MADV_DONTNEED"):
            self._mmap.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        """Flush and unmap. Views of :attr:`array_zyx` held elsewhere must be dropped first."""
        if self.array_zyx is None:
            return
        self.array_zyx = None
        self._mmap.flush()
        self._mmap.close()
        self._file.close()
