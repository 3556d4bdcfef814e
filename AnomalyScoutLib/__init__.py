"""AnomalyScout's library: everything that runs without 3D Slicer.

It never imports ``slicer``, ``qt``, ``ctk`` or ``vtk`` so that the same code runs in plain Python, in
Slicer's ``PythonSlicer``, on a GPU server and in CI (``Testing/test_import_guard.py`` keeps it that way)."""

__version__ = "0.1.0"
