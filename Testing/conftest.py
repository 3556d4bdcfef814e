"""Session-wide fixtures shared by the whole suite.

Phantom cases (:func:`AnomalyScoutLib.phantom.make_phantom`; each is a ``PhantomCase`` with ``.volume`` (a
``Volume`` in HU, canonical axial order, identity direction), ``.labels`` (uint8 label map, codes in
``phantom.LABEL_NAMES``: 1 body, 2 liver, ...), ``.anomaly_mask`` (uint8, 0 = normal voxel, else
``phantom.ANOMALY_CODES``), ``.slice_labels`` (bool per slice) and ``.anomalies`` (records with kind and
slices)):

- ``tiny_phantom``: a normal 64 x 64 x 24 case (seed 0, 6.25 x 6.25 x 13.75 mm voxels), made in well under a
  second.
- ``tiny_anomalous_phantom``: the same seed and grid with a liver tumour and a metal clip inserted, so every
  voxel outside its ``anomaly_mask`` equals ``tiny_phantom``.

Both are made once per session and shared: treat their arrays as read-only.

Models that need no training:

- ``tiny_architecture``: a 32x32 configuration small enough that a whole phantom scores in about a second.
- ``tiny_model_file``: a random-initialised (seed 0) model of that configuration saved as a model file, for
  code that loads models from disk (the worker, ``anomalyscout calibrate``, the benchmarks' model readers).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.nets.architecture import ArchitectureConfig
from AnomalyScoutLib.phantom import PhantomCase, make_phantom

TINY_SHAPE_XYZ = (64, 64, 24)


def _read_only(case: PhantomCase) -> PhantomCase:
    for array in (case.volume.array_zyx, case.labels, case.anomaly_mask):
        array.flags.writeable = False
    return case


@pytest.fixture(scope="session")
def tiny_phantom() -> PhantomCase:
    return _read_only(make_phantom(0, shape_xyz=TINY_SHAPE_XYZ))


@pytest.fixture(scope="session")
def tiny_anomalous_phantom() -> PhantomCase:
    return _read_only(make_phantom(0, shape_xyz=TINY_SHAPE_XYZ, anomalies=("tumour", "metal")))


@pytest.fixture(scope="session")
def tiny_architecture() -> ArchitectureConfig:
    return ArchitectureConfig(
        32, (16, 16, 8, 8), z_dim=16, w_dim=16, mapping_layers=2, position_frequencies=2
    )


@pytest.fixture(scope="session")
def tiny_model_file(tiny_architecture, tmp_path_factory) -> Path:
    return AnomalyModel.create(tiny_architecture, seed=0).save(
        tmp_path_factory.mktemp("model") / "tiny.safetensors"
    )
