"""Opening a worklist case in the scene: a volume file, or a folder holding one DICOM series.

``slicer.util.loadVolume`` reads files only; a DICOM folder goes through Slicer's DICOM module
(``DICOMLib.DICOMUtils``): imported into a temporary database, so the user's own database is left alone,
and loaded by the plugin that is most confident about it (the scalar-volume plugin for a CT series). Both
Slicer entry points are passed in, so this is tested without the application.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from AnomalyScoutLib.errors import AnomalyScoutError

__all__ = ["CaseLoadError", "load_case"]

#: The node class a case must load as (the module scores scalar volumes).
VOLUME_CLASS = "vtkMRMLScalarVolumeNode"


class CaseLoadError(AnomalyScoutError):
    """A worklist case could not be opened as one scalar volume."""


def load_case(
    case: str | Path,
    scene: Any,
    load_volume: Callable[[str], Any],
    dicom_utils: Any = None,
) -> Any:
    """Load ``case`` into ``scene`` and return its scalar volume node.

    Args:
        case: a volume file (NRRD, NIfTI, MHA, ...) or a folder of one DICOM series.
        scene: the MRML scene (``slicer.mrmlScene``), to find the nodes the DICOM module loaded.
        load_volume: ``slicer.util.loadVolume``.
        dicom_utils: ``DICOMLib.DICOMUtils`` (imported here when ``None``: it needs the application).

    Raises:
        CaseLoadError: the case is missing, or its folder holds no loadable CT series.
    """
    path = Path(case)
    if path.is_file():
        return load_volume(str(path))
    if not path.is_dir():
        raise CaseLoadError(f"the case {path} does not exist any more")
    if dicom_utils is None:
        from DICOMLib import DICOMUtils as dicom_utils
    files = sorted(str(p) for p in path.rglob("*") if p.is_file())
    with dicom_utils.TemporaryDICOMDatabase():
        dicom_utils.importDicom(str(path))
        series = sorted(dicom_utils.seriesUIDsForFiles(files))
        node_ids = dicom_utils.loadSeriesByUID(series) if series else []
    volumes = [scene.GetNodeByID(i) for i in node_ids]
    volumes = [node for node in volumes if node is not None and node.IsA(VOLUME_CLASS)]
    if not volumes:
        raise CaseLoadError(f"{path.name} holds no DICOM series that loads as a CT volume")
    return volumes[0]
