"""The regressor on disk: its own safetensors file, and inside a model file under the ``position.`` prefix.

``anomalyscout position-train`` writes a regressor file: tensors ``position.*`` and one header key,
``"anomalyscout_position"``, holding JSON ``{"config": {...}, "training": {...}, "validation": {...},
"tensor_sha256"}``. ``anomalyscout attach-position`` copies those tensors into a model file and its JSON
into the model's metadata as ``"position_regressor"`` (model files without it still load and place slices
by index). Nothing is pickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save

from AnomalyScoutLib.atomic import write_bytes_atomic
from AnomalyScoutLib.errors import AnomalyScoutError, ModelFileError
from AnomalyScoutLib.position.network import PositionRegressor, RegressorConfig

if TYPE_CHECKING:
    from AnomalyScoutLib.model_file import AnomalyModel

__all__ = [
    "FILE_KEY",
    "METADATA_KEY",
    "PREFIX",
    "attach_position",
    "load_regressor",
    "regressor_from_tensors",
    "regressor_tensors",
    "save_regressor",
]

PREFIX = "position"
#: Key of the regressor's JSON in a model file's metadata.
METADATA_KEY = "position_regressor"
#: Header key of a standalone regressor file.
FILE_KEY = "anomalyscout_position"


def regressor_tensors(regressor: PositionRegressor) -> dict[str, torch.Tensor]:
    """The regressor's weights named ``position.<name>``, float32 on the CPU."""
    return {
        f"{PREFIX}.{name}": tensor.detach().cpu().to(torch.float32).contiguous()
        for name, tensor in regressor.state_dict().items()
    }


def regressor_from_tensors(
    tensors: dict[str, torch.Tensor], info: dict[str, Any], source: str | os.PathLike[str]
) -> PositionRegressor:
    """Build the regressor from ``position.*`` tensors and its JSON ``info``; every mismatch names the file.

    Raises:
        ModelFileError: invalid configuration, missing, unexpected or misshapen tensors.
    """
    try:
        config = RegressorConfig.from_dict(dict(info.get("config", {})))
    except (AnomalyScoutError, AttributeError, TypeError) as error:
        raise ModelFileError(f"{source}: invalid position regressor configuration: {error}") from None
    regressor = PositionRegressor(config)
    expected = regressor.state_dict()
    stored = {name[len(PREFIX) + 1 :]: t for name, t in tensors.items() if name.startswith(PREFIX + ".")}
    missing, extra = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    if missing or extra:
        what = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(extra[:3])}"
        raise ModelFileError(f"{source}: position regressor tensors do not match its configuration ({what})")
    for name, tensor in stored.items():
        if tensor.shape != expected[name].shape:
            raise ModelFileError(
                f"{source}: position tensor {name} has shape {tuple(tensor.shape)}, the configuration needs "
                f"{tuple(expected[name].shape)}"
            )
        stored[name] = tensor.to(torch.float32)
    regressor.load_state_dict(stored)
    return regressor.eval().requires_grad_(False)


def save_regressor(path: str | os.PathLike[str], regressor: PositionRegressor, info: dict[str, Any]) -> Path:
    """Write a standalone regressor file atomically; ``info`` holds ``training`` and ``validation``."""
    from AnomalyScoutLib.model_file import tensor_digest

    path = Path(path)
    if not path.parent.is_dir():
        raise ModelFileError(f"cannot save the position regressor: folder {path.parent} does not exist")
    tensors = regressor_tensors(regressor)
    header = {**info, "config": regressor.config.to_dict(), "tensor_sha256": tensor_digest(tensors)}
    write_bytes_atomic(path, save(tensors, metadata={FILE_KEY: json.dumps(header)}))
    return path


def load_regressor(path: str | os.PathLike[str]) -> tuple[PositionRegressor, dict[str, Any]]:
    """Read a regressor file (``position-train``'s output) or a model file that holds one.

    Returns:
        The regressor (eval mode, CPU) and its JSON info (``config``, ``training``, ``validation``).

    Raises:
        ModelFileError: unreadable, tampered with, or holding no position regressor.
    """
    from AnomalyScoutLib.model_file import METADATA_KEY as MODEL_KEY
    from AnomalyScoutLib.model_file import tensor_digest

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"position regressor file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            names = [name for name in handle.keys() if name.startswith(PREFIX + ".")]  # noqa: SIM118
            tensors = {name: handle.get_tensor(name) for name in names}
    except Exception as error:  # noqa: BLE001 - safetensors raises its own and OS errors: all "unreadable"
        raise ModelFileError(f"{path} is not a readable safetensors file: {error}") from None
    try:
        if FILE_KEY in header:
            info = json.loads(header[FILE_KEY])
            if tensor_digest(tensors) != info.pop("tensor_sha256", None):
                raise ModelFileError(f"{path}: the regressor's tensors do not match their SHA-256")
        elif MODEL_KEY in header and METADATA_KEY in json.loads(header[MODEL_KEY]):
            info = json.loads(header[MODEL_KEY])[METADATA_KEY]
        else:
            raise ModelFileError(
                f"{path} holds no position regressor (make one with `anomalyscout position-train`)"
            )
    except json.JSONDecodeError as error:
        raise ModelFileError(f"{path}: header is not valid JSON ({error})") from None
    return regressor_from_tensors(tensors, info, path), info


def attach_position(
    model_path: str | os.PathLike[str],
    position_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
) -> AnomalyModel:
    """Write a copy of the model file with the regressor of ``position_path`` in it (replacing any other).

    The networks keep their stored precision; the model gets a new ``model_id`` (its tensors changed), its
    calibration and training records are kept.

    Raises:
        ModelFileError: either file is unreadable or inconsistent, or the output folder does not exist.
    """
    from AnomalyScoutLib.model_file import AnomalyModel

    regressor, info = load_regressor(position_path)
    model = AnomalyModel.load(model_path, "cpu")
    with safe_open(str(model_path), framework="pt") as handle:
        half = any(
            handle.get_slice(name).get_dtype() == "F16"
            for name in handle.keys()
            if name.startswith("generator.")  # noqa: SIM118
        )
    model.position_regressor = regressor
    model.metadata[METADATA_KEY] = {
        "config": regressor.config.to_dict(),
        **{key: value for key, value in info.items() if key != "config"},
        "source": os.fspath(position_path),
    }
    model.save(out_path, half=half)
    return model
