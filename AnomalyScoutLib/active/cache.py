"""Per-case scores kept on disk, so that re-ranking a pool (or a grown pool) only scores what is new.

An entry's key is the SHA-256 of the case's *content* (the file, or every file of a DICOM folder with its
relative path) together with the model id (``rank`` passes the scorer's whole identity: model id, slice
placement and calibration): a renamed or copied file is still a hit, an edited file or another model is a
miss. Entries are ``.npz`` files (numbers only, read with ``allow_pickle=False``) written atomically; an entry
that cannot be read is treated as a miss and overwritten, never as an error.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np

from AnomalyScoutLib.active.ranking import CaseScores
from AnomalyScoutLib.atomic import write_bytes_atomic
from AnomalyScoutLib.errors import ConfigError, UnreadableVolumeError

__all__ = ["ScoreCache", "content_hash", "default_cache_dir"]

_CHUNK = 1 << 20


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/anomalyscout/scores`` (``~/.cache/...`` when unset): survives between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "anomalyscout" / "scores"


def content_hash(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, or of a folder's files (sorted relative paths and their bytes).

    Raises:
        UnreadableVolumeError: the path does not exist or cannot be read.
    """
    path = Path(path)
    digest = hashlib.sha256()
    try:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            if not files:
                raise UnreadableVolumeError(f"{path}: the folder holds no files")
            for file in files:
                digest.update(file.relative_to(path).as_posix().encode() + b"\0")
                _update_with_file(digest, file)
        else:
            _update_with_file(digest, path)
    except OSError as error:
        raise UnreadableVolumeError(f"{path}: cannot be read ({error.strerror or error})") from error
    return digest.hexdigest()


def _update_with_file(digest: hashlib._Hash, file: Path) -> None:
    with open(file, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(chunk)


class ScoreCache:
    """A folder of cached :class:`CaseScores`, one ``.npz`` per (content hash, model id)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            reason = error.strerror or error
            raise ConfigError(f"cannot create the score cache {self.root}: {reason}") from error

    @staticmethod
    def key(content_sha256: str, model_id: str) -> str:
        """One name per (content, model) pair; hashing keeps odd characters of model ids out of names."""
        return hashlib.sha256(f"{content_sha256}\0{model_id}".encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.npz"

    def get(self, key: str) -> CaseScores | None:
        """The cached scores, or None when absent or unreadable (a stale entry is simply recomputed)."""
        try:
            with np.load(self._path(key), allow_pickle=False) as entry:
                return CaseScores(
                    slice_scores=entry["slice_scores"],
                    slice_percentiles=entry["slice_percentiles"],
                    case_score=float(entry["case_score"]),
                    case_percentile=float(entry["case_percentile"]),
                    latents=entry["latents"],
                    in_range=entry["in_range"] if "in_range" in entry.files else None,
                )
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, ConfigError):
            return None

    def put(self, key: str, scores: CaseScores) -> None:
        """Store ``scores`` under ``key`` (atomically: concurrent readers never see half an entry)."""
        buffer = io.BytesIO()
        np.savez(
            buffer,
            slice_scores=np.asarray(scores.slice_scores, dtype=np.float64),
            slice_percentiles=np.asarray(scores.slice_percentiles, dtype=np.float64),
            case_score=np.float64(scores.case_score),
            case_percentile=np.float64(scores.case_percentile),
            latents=np.asarray(scores.latents, dtype=np.float32),
            in_range=scores.judged,
        )
        write_bytes_atomic(self._path(key), buffer.getvalue())
