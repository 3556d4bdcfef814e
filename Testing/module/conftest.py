"""Fixtures for the Slicer module's tests: a real MRML scene from slicer-core and worker-style output folders.

``AnomalyScout/`` is a Slicer scripted-module folder, not a package: Slicer puts it on ``sys.path``, so do we.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
for folder in (REPO, REPO / "AnomalyScout"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

slicer = pytest.importorskip("slicer", reason="the module tests need slicer-core (pip install '.[slicer]')")
sitk = pytest.importorskip("SimpleITK")

#: The synthetic case: (z, y, x) voxels, LPS spacing and origin; an "anomaly" box on one slice.
SHAPE_ZYX = (24, 40, 48)
SPACING_XYZ = (1.5, 1.25, 2.5)
ORIGIN_XYZ = (-30.0, -20.0, 100.0)
ANOMALY_SLICE = 15
ANOMALY_BOX_YX = (slice(12, 20), slice(10, 20))


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


def _write(array_zyx: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(array_zyx.astype(np.float32))
    image.SetSpacing(SPACING_XYZ)
    image.SetOrigin(ORIGIN_XYZ)
    sitk.WriteImage(image, str(path))


def synthetic_ct() -> np.ndarray:
    """An elliptic "body" of soft tissue in air, HU."""
    z, y, x = SHAPE_ZYX
    rows, cols = np.mgrid[:y, :x]
    body = ((rows - y / 2) / (0.42 * y)) ** 2 + ((cols - x / 2) / (0.45 * x)) ** 2 < 1
    ct = np.full(SHAPE_ZYX, -1000.0, np.float32)
    ct[:, body] = 40.0
    return ct


def write_contract_outputs(out_dir: Path, flagged=(ANOMALY_SLICE,)) -> dict:
    """Write a worker output folder exactly as ``docs/design.md`` specifies, with a known anomaly.

    Returns the ``scores.json`` content so tests compare against what was written, not against constants.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    ct = synthetic_ct()
    body = ct > -500
    residual = np.where(body, 0.01, 0.0).astype(np.float32)
    residual[ANOMALY_SLICE][ANOMALY_BOX_YX] = 0.8
    _write(residual, out_dir / "residual.nrrd")
    _write(ct, out_dir / "reconstruction.nrrd")
    n = SHAPE_ZYX[0]
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.1, 0.2, n)
    scores[list(flagged)] = 0.9
    slices = [
        {
            "slice_index": k,
            "position": (k + 0.5) / n,
            "score": float(scores[k]),
            "percentile": float(99.9 if k in flagged else 50.0),
            "flagged": k in flagged,
            "threshold": 0.5,
            # LPS -> RAS; the centre of the in-plane grid of canonical slice k (k grows superior here)
            "center_ras": [
                -(ORIGIN_XYZ[0] + SPACING_XYZ[0] * (SHAPE_ZYX[2] - 1) / 2),
                -(ORIGIN_XYZ[1] + SPACING_XYZ[1] * (SHAPE_ZYX[1] - 1) / 2),
                ORIGIN_XYZ[2] + SPACING_XYZ[2] * k,
            ],
        }
        for k in range(n)
    ]
    report = {
        "case_score": float(scores.max()),
        "case_percentile": 99.9,
        "case_flagged": bool(flagged),
        "model_id": "test-model",
        "mode": "fast",
        "fpr": 0.01,
        "device": "cpu",
        "timings": {},
        "input": "ct.nrrd",
        "slices": slices,
    }
    (out_dir / "scores.json").write_text(json.dumps(report))
    return report


@pytest.fixture
def ct_path(tmp_path) -> Path:
    path = tmp_path / "ct.nrrd"
    _write(synthetic_ct(), path)
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
def real_run(tmp_path_factory, tiny_anomalous_phantom) -> RealRun:
    """The real worker on the tiny anomalous phantom with a tiny random model, launched in blocking mode.

    A random model checks the plumbing (files, grid, tables, callbacks), not detection quality; the library's
    tests and benchmarks measure that with the shipped model.
    """
    pytest.importorskip("torch")
    from AnomalyScoutWorkerRun import RunCallbacks, RunRequest, WorkerRun, blocking_launcher

    from AnomalyScoutLib.io.volume import write_volume
    from AnomalyScoutLib.model_file import AnomalyModel
    from AnomalyScoutLib.nets.architecture import ArchitectureConfig

    root = tmp_path_factory.mktemp("real_worker")
    tiny = ArchitectureConfig(
        32, (16, 16, 8, 8), z_dim=16, w_dim=16, mapping_layers=2, position_frequencies=2
    )
    model_path = AnomalyModel.create(tiny, seed=0).save(root / "tiny.safetensors")
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


def load_volume_node(scene, path: Path, name: str):
    """A scalar volume node read by Slicer's own NRRD reader (as "Add data" would)."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.ReadData(node), path
    node.CreateDefaultDisplayNodes()
    return node
