"""Training checkpoints: networks, optimiser moments, RNG states and counters in one safetensors file.

Everything that is a tensor goes into the safetensors body; everything else (counters, optimiser
hyper-parameters, the run's options) into one JSON string in its header. One file written atomically means a
crash or Ctrl-C during the write leaves the previous checkpoint intact, and resuming restores the exact state,
RNGs included, so a resumed run continues bit for bit as an uninterrupted one would.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn

from AnomalyScoutLib.atomic import write_bytes_atomic
from AnomalyScoutLib.errors import ConfigError

__all__ = ["CHECKPOINT_NAME", "Checkpoint", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_NAME = "checkpoint.safetensors"
_STATE_KEY = "anomalyscout_checkpoint"
_VERSION = 1


class Checkpoint:
    """A loaded checkpoint: ``tensors`` by name and the JSON ``state``."""

    def __init__(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        self.tensors, self.state = tensors, state

    def restore_module(self, name: str, module: nn.Module) -> None:
        """Loads ``module`` from the tensors saved under ``name.``."""
        prefix = f"{name}."
        module.load_state_dict({k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)})

    def restore_optimizer(self, name: str, optimizer: torch.optim.Optimizer) -> None:
        """Rebuilds the optimiser's state dict from its tensors and its JSON part."""
        saved = self.state["optimizers"][name]
        per_param: dict[int, dict[str, Any]] = {int(k): dict(v) for k, v in saved["scalars"].items()}
        prefix = f"{name}.state."
        for key, tensor in self.tensors.items():
            if key.startswith(prefix):
                index, field = key[len(prefix) :].split(".", 1)
                per_param.setdefault(int(index), {})[field] = tensor
        optimizer.load_state_dict({"state": per_param, "param_groups": saved["param_groups"]})


def _optimizer_parts(name: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for field, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}.state.{index}.{field}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[field] = value
    return tensors, {"scalars": scalars, "param_groups": state["param_groups"]}


def save_checkpoint(
    path: str | os.PathLike[str],
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    extra_tensors: dict[str, torch.Tensor],
    state: dict[str, Any],
) -> None:
    """Writes modules, optimisers, extra tensors (RNG states, running means) and ``state`` atomically."""
    path = Path(path)
    tensors = {
        f"{n}.{k}": v.detach().cpu().contiguous()
        for n, m in modules.items()
        for k, v in m.state_dict().items()
    }
    tensors.update({k: v.detach().cpu().contiguous() for k, v in extra_tensors.items()})
    optimizer_state = {}
    for name, optimizer in optimizers.items():
        optimizer_tensors, optimizer_state[name] = _optimizer_parts(name, optimizer)
        tensors.update(optimizer_tensors)
    header = {"version": _VERSION, **state, "optimizers": optimizer_state}
    write_bytes_atomic(path, save(tensors, metadata={_STATE_KEY: json.dumps(header)}))


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Reads a checkpoint written by :func:`save_checkpoint`.

    Raises:
        ConfigError: the file is missing, unreadable or not a checkpoint of this version.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = (handle.metadata() or {}).get(_STATE_KEY)
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - not a dict
    except Exception as error:  # noqa: BLE001 - safetensors and OS errors both mean "unreadable"
        raise ConfigError(f"{path} is not a readable checkpoint: {error}") from None
    if header is None:
        raise ConfigError(f"{path} is not an AnomalyScout training checkpoint")
    state = json.loads(header)
    if state.get("version") != _VERSION:
        raise ConfigError(f"{path}: checkpoint version {state.get('version')!r} is not supported")
    return Checkpoint(tensors, state)
