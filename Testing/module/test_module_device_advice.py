"""The device line under the device choice: where a run goes and when to prefer fast mode."""

from __future__ import annotations

import pytest
from AnomalyScoutModuleLib.device_advice import LOW_GPU_MEMORY_BYTES, device_advice


@pytest.mark.parametrize(
    ("device", "mode", "memory", "expected"),
    [
        ("auto", "accurate", None, "try fast first"),
        ("cpu", "accurate", 16 * 1024**3, "try fast first"),
        ("auto", "fast", None, "no CUDA GPU was found"),
        ("cuda", "fast", None, "the run will fail"),
        ("auto", "accurate", LOW_GPU_MEMORY_BYTES // 2, "choose fast mode or the cpu device"),
    ],
)
def test_the_advice_names_the_device_and_what_to_do(device, mode, memory, expected):
    assert expected in device_advice(device, mode, memory)


def test_enough_gpu_memory_gets_no_warning():
    advice = device_advice("auto", "accurate", 2 * LOW_GPU_MEMORY_BYTES)
    assert advice.startswith("Scoring on the GPU (8.0 GB)") and "fast" not in advice
