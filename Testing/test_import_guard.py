"""The library imports without 3D Slicer: no module of AnomalyScoutLib may pull in slicer, qt, ctk or vtk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
FORBIDDEN = ("slicer", "qt", "ctk", "vtk")

# Runs in a fresh interpreter so that modules other tests imported (the Slicer module's tests load slicer) do
# not count. `__main__` modules are skipped: importing them runs the program.
_PROBE = """
import importlib, json, pkgutil, sys
import AnomalyScoutLib
names, failures = ["AnomalyScoutLib"], {}
for info in pkgutil.walk_packages(AnomalyScoutLib.__path__, "AnomalyScoutLib."):
    if info.name.rsplit(".", 1)[-1] == "__main__":
        continue
    try:
        importlib.import_module(info.name)
        names.append(info.name)
    except Exception as error:
        failures[info.name] = f"{type(error).__name__}: {error}"
roots = sorted({name.split(".")[0].lower() for name in sys.modules})
print(json.dumps({"imported": names, "failures": failures, "roots": roots}))
"""


def test_every_library_module_imports_without_slicer_qt_ctk_or_vtk():
    result = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["failures"] == {}, "library modules that do not import"
    assert len(report["imported"]) > 5
    assert "AnomalyScoutLib.io.volume" in report["imported"]
    loaded = [root for root in report["roots"] if root in FORBIDDEN or root.startswith("vtk")]  # vtkmodules
    assert loaded == [], f"importing the library loaded {loaded}"
