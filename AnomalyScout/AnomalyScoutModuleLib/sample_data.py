"""A phantom CT in the Sample Data module, so that a new user can try AnomalyScout with one click.

The phantom is made on the spot by the library's generator (numpy and scipy, both bundled with Slicer)
rather than downloaded: nothing to host, no network, and it carries a liver tumour the model should find.
Registered through ``SampleDataLogic.registerCustomSampleDataSource`` with a ``customDownloader``, which the
Sample Data module calls with the source when its button is pressed (Slicer's ``SampleData.py``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["SAMPLE_CATEGORY", "SAMPLE_NAME", "make_sample_file", "register_sample_data"]

SAMPLE_CATEGORY = "AnomalyScout"
SAMPLE_NAME = "AnomalyScoutPhantom"
#: The case shown in ``docs/slicer_module.md``: seed 11, a liver tumour, the generator's default grid.
SAMPLE_SEED = 11
SAMPLE_ANOMALIES = ("tumour",)


def make_sample_file(folder: str | Path) -> Path:
    """Write the sample phantom CT as NRRD in ``folder`` (made again each time: under a minute)."""
    from AnomalyScoutLib.io.volume import write_volume
    from AnomalyScoutLib.phantom import make_phantom

    path = Path(folder) / f"{SAMPLE_NAME}.nrrd"
    write_volume(make_phantom(SAMPLE_SEED, anomalies=SAMPLE_ANOMALIES).volume, path)
    return path


def register_sample_data(
    sample_data_logic: Any,
    load_volume: Callable[..., Any],
    temporary_path: Callable[[], str],
    thumbnail: str | Path,
) -> None:
    """Add the phantom to the Sample Data module.

    Args:
        sample_data_logic: ``SampleData.SampleDataLogic``.
        load_volume: ``slicer.util.loadVolume``.
        temporary_path: gives ``slicer.app.temporaryPath`` when the button is pressed.
        thumbnail: the button's picture.
    """

    def download(_source: Any) -> Any:
        folder = tempfile.mkdtemp(prefix="AnomalyScoutSample-", dir=temporary_path())
        return load_volume(str(make_sample_file(folder)), {"name": SAMPLE_NAME})

    sample_data_logic.registerCustomSampleDataSource(
        category=SAMPLE_CATEGORY,
        sampleName=SAMPLE_NAME,
        uris=[],
        fileNames=[],
        nodeNames=[],
        checksums=[],
        thumbnailFileName=str(thumbnail),
        customDownloader=download,
    )
