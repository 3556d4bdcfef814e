"""Reading and writing CT volumes, and the canonical axial order every model sees.

:mod:`AnomalyScoutLib.io.volume` turns files (NIfTI, NRRD, MHA, DICOM) into a validated :class:`Volume`
in Hounsfield units and writes results back atomically; :mod:`AnomalyScoutLib.io.geometry` maps any file
orientation onto the canonical (inferior→superior, anterior→posterior, right→left) axial order and back,
voxel for voxel.
"""

from __future__ import annotations

from AnomalyScoutLib.io.volume import (
    Volume,
    list_dicom_series,
    read_label_map,
    read_volume,
    validate_ct,
    write_volume,
)

__all__ = ["Volume", "list_dicom_series", "read_label_map", "read_volume", "validate_ct", "write_volume"]
