"""Fixtures for the Slicer module's tests: a real MRML scene from slicer-core and worker-style output folders.

``AnomalyScout/`` is a Slicer scripted-module folder, not a package: Slicer puts it on ``sys.path``, so do we.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
for folder in (REPO, REPO / "AnomalyScout"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

slicer = pytest.importorskip("slicer", reason="the module tests need slicer-core (pip install '.[slicer]')")
pytest.importorskip("SimpleITK")

from module_helpers import load_volume_node, synthetic_ct, write_contract_outputs, write_volume_file  # noqa: E402
from widget_harness import slicer_app, widget  # noqa: E402, F401 - fixtures of the widget tests


@pytest.fixture
def scene():
    """A fresh scene with the default colour tables, set as ``slicer.mrmlScene`` for ``slicer.util``."""
    mrml = slicer.vtkMRMLScene()
    colours = slicer.vtkSlicerColorLogic()
    colours.SetMRMLScene(mrml)
    colours.AddDefaultColorNodes()
    previous = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = mrml
    yield mrml
    slicer.mrmlScene = previous


@pytest.fixture
def ct_path(tmp_path) -> Path:
    path = tmp_path / "ct.nrrd"
    write_volume_file(synthetic_ct(), path)
    return path


@pytest.fixture
def ct_node(scene, ct_path):
    """The input CT as a scalar volume node."""
    return load_volume_node(scene, ct_path, "case1")


@pytest.fixture
def run_dir(tmp_path) -> tuple[Path, dict]:
    out = tmp_path / "run1"
    return out, write_contract_outputs(out)


@pytest.fixture
def red_slice_logic(scene):
    """The logic of an axial "Red" slice view as Slicer's layout makes it (the app logic kept alive)."""
    app_logic = slicer.vtkMRMLApplicationLogic()
    app_logic.SetMRMLScene(scene)
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(app_logic)
    logic.SetMRMLScene(scene)
    logic.AddSliceNode("Red").SetOrientation("Axial")  # the app's layout does this; bare slicer-core does not
    logic.app_logic = app_logic
    return logic


@dataclass
class RealRun:
    """One run of the real worker (``python -m AnomalyScoutLib.worker``) through the module's run logic."""

    ct_path: Path
    model_path: Path
    out_dir: Path
    outcome: object
    events: list
    phantom: object


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random model file (32 px): the real worker's runs here check plumbing, not detection quality;
    the library's tests and benchmarks measure that with the shipped model."""
    pytest.importorskip("torch")
    from AnomalyScoutLib.model_file import AnomalyModel
    from AnomalyScoutLib.nets.architecture import ArchitectureConfig

    tiny = ArchitectureConfig(
        32, (16, 16, 8, 8), z_dim=16, w_dim=16, mapping_layers=2, position_frequencies=2
    )
    return AnomalyModel.create(tiny, seed=0).save(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="session")
def real_run(tmp_path_factory, tiny_anomalous_phantom, tiny_model) -> RealRun:
    """The real worker on the tiny anomalous phantom with the tiny random model, launched in blocking mode."""
    from AnomalyScoutModuleLib.worker_run import RunCallbacks, RunRequest, WorkerRun, blocking_launcher

    from AnomalyScoutLib.io.volume import write_volume

    root = tmp_path_factory.mktemp("real_worker")
    model_path = tiny_model
    ct_path = root / "ct.nrrd"
    write_volume(tiny_anomalous_phantom.volume, ct_path)
    events: list = []
    outcomes: list = []
    callbacks = RunCallbacks(
        started=lambda *a: events.append(("started", *a)),
        progress=lambda *a: events.append(("progress", *a)),
        warning=lambda *a: events.append(("warning", *a)),
        finished=outcomes.append,
    )
    request = RunRequest(ct_path, root / "out", model_path, device="cpu", threads=1)
    WorkerRun(request, blocking_launcher, callbacks, python=sys.executable).start()
    return RealRun(ct_path, model_path, request.out_dir, outcomes[0], events, tiny_anomalous_phantom)
