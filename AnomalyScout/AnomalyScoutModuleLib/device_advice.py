"""Advice on the device before a run, in words: which device will score and what to expect.

SlicerTotalSegmentator warns when there is no GPU or less than 7 GB of GPU memory and offers its fast mode;
AnomalyScout does the same in a line under the device choice rather than in a dialog, since both modes work
on the CPU, only slower. torch is asked only after the dependency check, never when Slicer loads the module.
"""

from __future__ import annotations

__all__ = ["LOW_GPU_MEMORY_BYTES", "cuda_memory_bytes", "device_advice"]

#: Below this much GPU memory the advice suggests fast mode or the CPU. A cautious guess, not a measurement:
#: the worker scores a few slices at a time, and the full-resolution model has not been profiled on a GPU.
LOW_GPU_MEMORY_BYTES = 4 * 1024**3


def cuda_memory_bytes() -> int | None:
    """The first CUDA device's total memory, or ``None`` without CUDA (imports torch: call after install)."""
    import torch

    if not (torch.backends.cuda.is_built() and torch.cuda.is_available()):
        return None
    return int(torch.cuda.get_device_properties(0).total_memory)


def device_advice(device: str, mode: str, gpu_memory: int | None) -> str:
    """One line for the panel about where a run of ``mode`` on ``device`` will go.

    Args:
        device: the parameter node's choice (auto, cpu, cuda).
        mode: fast, accurate or denoise.
        gpu_memory: :func:`cuda_memory_bytes`.
    """
    if device == "cuda" and gpu_memory is None:
        return "No CUDA GPU was found: choose auto or cpu, or the run will fail."
    if device == "cpu" or gpu_memory is None:
        where = "the CPU" if device == "cpu" else "the CPU (no CUDA GPU was found)"
        if mode == "accurate":
            return f"Scoring on {where}: accurate mode is several times slower than fast; try fast first."
        return f"Scoring on {where}."
    size = f"{gpu_memory / 1024**3:.1f} GB"
    if gpu_memory < LOW_GPU_MEMORY_BYTES:
        return (
            f"Scoring on a GPU with {size} of memory: if the run stops for lack of memory, choose fast "
            "mode or the cpu device."
        )
    return f"Scoring on the GPU ({size})."
