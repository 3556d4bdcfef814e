"""Device choice: CUDA, then MPS, then CPU; an unavailable explicit request is a ConfigError."""

from __future__ import annotations

import pytest
import torch

from AnomalyScoutLib import devices
from AnomalyScoutLib.devices import select_device
from AnomalyScoutLib.errors import ConfigError


@pytest.fixture
def machine(monkeypatch):
    """Pretend to be a machine with the given accelerators."""

    def configure(cuda_count: int = 0, mps: bool = False) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_count)
        monkeypatch.setattr(devices, "_mps_available", lambda: mps)

    return configure


@pytest.mark.parametrize(
    ("cuda_count", "mps", "expected"),
    [(0, False, "cpu"), (0, True, "mps"), (2, True, "cuda"), (1, False, "cuda")],
)
def test_auto_prefers_cuda_then_mps_then_cpu(machine, cuda_count, mps, expected):
    machine(cuda_count, mps)
    assert select_device("auto").type == expected
    assert select_device().type == expected


@pytest.mark.parametrize(
    ("spec", "expected"), [("cpu", "cpu"), ("CUDA:1", "cuda:1"), (" cuda ", "cuda"), ("mps", "mps")]
)
def test_explicit_devices_are_honoured_when_present(machine, spec, expected):
    machine(cuda_count=2, mps=True)
    assert select_device(spec) == torch.device(expected)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("cuda", "CUDA is not available"),
        ("mps", "MPS is not available"),
        ("gpu", "not one of"),
        ("cpu:0", "index"),
    ],
)
def test_unavailable_or_malformed_devices_are_refused(machine, spec, fragment):
    machine(cuda_count=0, mps=False)
    with pytest.raises(ConfigError, match=fragment):
        select_device(spec)


def test_a_cuda_index_beyond_the_devices_present_is_refused(machine):
    machine(cuda_count=2)
    with pytest.raises(ConfigError, match="only 2 CUDA"):
        select_device("cuda:2")
