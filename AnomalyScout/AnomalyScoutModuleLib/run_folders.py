"""The temporary folders of the module's runs, and when each is removed.

A run writes the exported CT and the worker's outputs to a folder of its own under Slicer's temporary path.
The exported CT is removed as soon as the worker exits; the outputs are kept while they are the results
shown for their input, because a later run that is cancelled or fails restores its score table from them.
So a folder is removed when its run did not finish, when a newer run of the same input replaces it, when
the scene closes and when the module is cleaned up (Slicer exits): none outlives the session.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

__all__ = ["RunFolders"]


class RunFolders:
    """Creates run folders under ``parent`` and removes them when their results are no longer shown.

    Args:
        parent: where the folders go (``slicer.app.temporaryPath``).
    """

    PREFIX = "AnomalyScout-"

    def __init__(self, parent: str | Path) -> None:
        self.parent = Path(parent)
        self._kept: dict[str, Path] = {}

    def create(self) -> Path:
        """A new empty folder for one run."""
        self.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=self.PREFIX, dir=self.parent))

    def keep(self, key: str, folder: Path) -> None:
        """``folder`` now holds the results shown for ``key`` (an input node): the previous one goes."""
        previous = self._kept.get(key)
        self._kept[key] = folder
        if previous is not None and previous != folder:
            self.discard(previous)

    @staticmethod
    def discard(folder: Path) -> None:
        """Remove a run's folder (a cancelled or failed run, or results replaced)."""
        shutil.rmtree(folder, ignore_errors=True)

    def clear(self) -> None:
        """Remove every kept folder (scene closed, module cleaned up)."""
        for folder in self._kept.values():
            self.discard(folder)
        self._kept.clear()

    @property
    def kept(self) -> list[Path]:
        return list(self._kept.values())
