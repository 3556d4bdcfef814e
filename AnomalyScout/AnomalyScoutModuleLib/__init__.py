"""The AnomalyScout Slicer module's helpers: scene logic, worker runs, worklist, dependencies, case loading.

A package beside ``AnomalyScout.py`` rather than loose files: Slicer's scripted-module factory takes every
top-level ``.py`` of the module folder for a module of its own, so helpers live one level down, as in
MONAIAuto3DSeg. Everything here imports only what Slicer bundles (numpy, vtk, slicer, the standard library
and the light parts of ``AnomalyScoutLib``); torch, safetensors, psutil and tqdm are imported inside the
functions that need them, after ``AnomalyScoutLogic.ensureDependencies`` has installed them.
"""

from __future__ import annotations

__all__: list[str] = []
