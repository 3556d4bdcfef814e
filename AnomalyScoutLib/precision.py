"""Where inference runs its networks in bfloat16: only on hardware that computes it natively.

Fast mode's networks (encoder, generator, head) are convolutions of 16-128 channels. Under bf16 autocast they
run 1.49x faster on a CPU with AVX512-BF16 (``benchmarks/results/precision_probe.json``: encoder 1.9x,
generator 1.2x, head 1.7x), and CUDA has used bf16 since the first release. Where bf16 is emulated (older
CPUs, MPS) it is slower than fp32, so ``"auto"`` asks the hardware, and ``"fp32"`` turns it off everywhere.

Calibrations are made and applied in whatever precision each machine runs: what bf16 moves is measured on
held-out phantoms (``docs/speed.md``: scores, false flags and slice AUROC under the fp32 calibration). On a
CPU only ``fast`` mode runs bf16; the refinement modes, whose gradients were not measured, keep fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from AnomalyScoutLib.errors import ConfigError

__all__ = ["PRECISIONS", "bf16_autocast", "check_precision", "native_bf16"]

#: ``--precision``: ``auto`` = bf16 where the device computes it natively, ``fp32`` = never.
PRECISIONS: tuple[str, ...] = ("auto", "fp32")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a :class:`ConfigError` naming the choices."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return precision


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 matrix products in hardware (CUDA with bf16, a CPU with AVX512-BF16
    or AMX); MPS and other CPUs emulate it, slower than fp32."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        # private but stable since torch 2.1; a torch without them is treated as emulating bf16
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)
    return False


@contextlib.contextmanager
def bf16_autocast(device: torch.device, enabled: bool) -> Iterator[None]:
    """bf16 autocast on ``device`` when ``enabled`` (the caller has checked :func:`native_bf16`), else
    nothing (fp32). Outputs may be bf16: callers that keep them convert with ``.float()``."""
    if enabled:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield
