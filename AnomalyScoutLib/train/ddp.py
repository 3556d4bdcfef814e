"""Multi-process data-parallel training without wrapping the networks in DistributedDataParallel.

A GAN step alternates which network has gradients and R1 needs a double backward, both awkward with DDP's
hooks; averaging gradients by hand after each backward (as StyleGAN2-ADA does) is simpler and equally fast
at this scale. Launch with ``torchrun --nproc_per_node N -m AnomalyScoutLib train-gan ...``; a plain
``python`` run is the one-process special case and needs no process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Distributed", "average_gradients", "broadcast_parameters", "init_distributed"]


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and shows progress."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> Distributed:
    """Joins the process group torchrun describes in the environment (NCCL on CUDA, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def broadcast_parameters(module: nn.Module, info: Distributed) -> None:
    """Makes every process start from rank 0's weights and buffers."""
    if info.active:
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def average_gradients(module: nn.Module, info: Distributed) -> None:
    """Averages the gradients of ``module`` over all processes (one flattened all-reduce)."""
    if not info.active:
        return
    params = [p for p in module.parameters() if p.grad is not None]
    if not params:
        return
    flat = torch.cat([p.grad.flatten() for p in params]).div_(info.world_size)
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
        offset += p.numel()
