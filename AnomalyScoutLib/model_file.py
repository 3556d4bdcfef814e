"""The one-file model: generator (EMA), encoder and discriminator weights + JSON metadata, in safetensors.

Layout (docs/design.md): tensors prefixed ``generator.``, ``encoder.``, ``discriminator.``; the safetensors
header metadata holds one key, ``"anomalyscout"``, with a JSON object::

    {"format_version": 1, "model_id", "code_version", "architecture": {...}, "resolution",
     "preprocessing": {"hu_window": [lo, hi], "position": "index"}, "training": {...},
     "calibration": {...} | null, "tensor_sha256": "..."}

The SHA-256 covers every tensor's name, dtype, shape and bytes, so an edited weight is refused instead of
silently producing wrong scores. Nothing is pickled: loading never runs code from the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn

from AnomalyScoutLib import __version__
from AnomalyScoutLib.anomaly_map.head import HEAD_KEY, AnomalyHead, head_from_metadata
from AnomalyScoutLib.atomic import write_bytes_atomic
from AnomalyScoutLib.denoiser import DENOISER_KEY, Denoiser, denoiser_from_metadata
from AnomalyScoutLib.errors import AnomalyScoutError, ConfigError, ModelFileError
from AnomalyScoutLib.nets.architecture import ArchitectureConfig
from AnomalyScoutLib.nets.discriminator import Discriminator
from AnomalyScoutLib.nets.encoder import Encoder
from AnomalyScoutLib.nets.generator import Generator
from AnomalyScoutLib.position import store as position_store
from AnomalyScoutLib.position.network import PositionRegressor
from AnomalyScoutLib.position_atlas import METADATA_KEY as ATLAS_KEY
from AnomalyScoutLib.position_atlas import PREFIX as ATLAS_PREFIX
from AnomalyScoutLib.position_atlas import PositionAtlas
from AnomalyScoutLib.preprocessing import POSITION_METHODS, HUWindow

__all__ = [
    "DEFAULT_MODEL_PATH",
    "FORMAT_VERSION",
    "METADATA_KEY",
    "AnomalyModel",
    "stored_in_half",
    "tensor_digest",
]

FORMAT_VERSION = 1
METADATA_KEY = "anomalyscout"
#: The shipped default model (trained on the phantom's normal volumes, see models/README.md).
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent.parent / "models" / "default.safetensors"
NETWORKS = ("generator", "encoder", "discriminator")


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors in name order (name, dtype, shape and raw bytes of each)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class AnomalyModel:
    """The three networks of one trained model and what is needed to use them on a CT.

    Attributes:
        generator: the EMA generator (``mapping``, ``synthesis``, ``mean_w``).
        encoder: image + position -> W+ code.
        discriminator: realness logits and the ``features`` used by the feature residual.
        architecture: the configuration the networks were built from.
        metadata: the JSON metadata (``training``, ``calibration``, ...), kept as loaded.

    Example:
        >>> model = AnomalyModel.load(DEFAULT_MODEL_PATH, "cpu")
        >>> ws = model.encoder(x, position); recon = model.generator.synthesis(ws, noise_mode="const")
    """

    def __init__(
        self,
        architecture: ArchitectureConfig,
        generator: Generator,
        encoder: Encoder,
        discriminator: Discriminator,
        metadata: dict[str, Any],
    ) -> None:
        self.architecture = architecture
        self.generator, self.encoder, self.discriminator = generator, encoder, discriminator
        self.metadata = metadata
        self.window = HUWindow.from_dict(metadata["preprocessing"])
        self.position_method = str(metadata["preprocessing"]["position"])
        #: The body-part regressor (``position.*`` tensors, ``metadata["position_regressor"]``); None in model
        #: files made before it existed, which place slices by index (AnomalyScoutLib/position/).
        self.position_regressor: PositionRegressor | None = None
        #: The anomaly-map head (``head.*`` tensors, ``metadata["head"]``); None in model files without one,
        #: which score with the pixel residual (AnomalyScoutLib/anomaly_map/).
        self.head: AnomalyHead | None = None
        #: The per-position intensity atlas (``atlas.*`` tensors, ``metadata["position_atlas"]``), a second
        #: calibrated opinion beside the reconstruction; None in model files without one.
        self.atlas: PositionAtlas | None = None
        #: The coarse-noise denoiser (``denoiser.*`` tensors, ``metadata["denoiser"]``), another calibrated
        #: opinion; None in model files without one (AnomalyScoutLib/denoiser.py).
        self.denoiser: Denoiser | None = None

    @classmethod
    def create(
        cls,
        architecture: ArchitectureConfig | dict[str, Any],
        *,
        window: HUWindow | None = None,
        position_method: str = "index",
        training: dict[str, Any] | None = None,
        seed: int | None = None,
    ) -> AnomalyModel:
        """A model with freshly initialised networks (to train, and for tests of code that uses models)."""
        if isinstance(architecture, dict):
            architecture = ArchitectureConfig.from_dict(architecture)
        if position_method not in POSITION_METHODS:
            raise ConfigError(
                f"unknown position method {position_method!r}; known: {', '.join(POSITION_METHODS)}"
            )
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            generator, encoder = Generator(architecture), Encoder(architecture)
            discriminator = Discriminator(architecture)
        encoder.anchor_to(generator)
        metadata = {
            "format_version": FORMAT_VERSION,
            "model_id": "",
            "code_version": __version__,
            "architecture": architecture.to_dict(),
            "resolution": architecture.resolution,
            "preprocessing": {**(window or HUWindow()).to_dict(), "position": position_method},
            "training": dict(training or {}),
            "calibration": None,
        }
        return cls(architecture, generator, encoder, discriminator, metadata)

    @property
    def resolution(self) -> int:
        return self.architecture.resolution

    @property
    def model_id(self) -> str:
        """Identifies the weights (derived from their hash at save time; empty for an unsaved model)."""
        return str(self.metadata.get("model_id", ""))

    @property
    def calibration(self) -> dict[str, Any] | None:
        """The score calibration stored with the model (``None`` until one is fitted)."""
        return self.metadata.get("calibration")

    @calibration.setter
    def calibration(self, value: dict[str, Any] | None) -> None:
        self.metadata["calibration"] = value

    def networks(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "encoder": self.encoder, "discriminator": self.discriminator}

    def to(self, device: torch.device | str) -> AnomalyModel:
        """Moves the networks (in place) and returns the model, like ``nn.Module.to``."""
        for net in self.networks().values():
            net.to(device)
        if self.head is not None:
            self.head.to(device)
        if self.atlas is not None:
            self.atlas.to(device)
        if self.denoiser is not None:
            self.denoiser.to(device)
        return self

    def state_tensors(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """All persistent tensors with their file names; floating ones cast to ``dtype``."""
        tensors = {}
        for prefix, net in self.networks().items():
            for name, tensor in net.state_dict().items():
                tensor = tensor.detach().cpu()
                tensors[f"{prefix}.{name}"] = (
                    tensor.to(dtype) if tensor.is_floating_point() else tensor
                ).contiguous()
        if self.position_regressor is not None:  # small: always float32
            tensors.update(position_store.regressor_tensors(self.position_regressor))
        if self.head is not None:  # small: always float32
            tensors.update(
                {
                    f"{HEAD_KEY}.{k}": t.detach().cpu().float().contiguous()
                    for k, t in self.head.state_dict().items()
                }
            )
        if self.denoiser is not None:  # like the networks (float16 in a half file: a U-Net's weights)
            tensors.update(
                {
                    f"{DENOISER_KEY}.{k}": t.detach().cpu().to(dtype).contiguous()
                    for k, t in self.denoiser.state_dict().items()
                }
            )
        if self.atlas is not None:  # 2 x bins x res²: stored like the networks
            tensors.update(
                {
                    f"{ATLAS_PREFIX}.{k}": t.detach().cpu().to(dtype).contiguous()
                    for k, t in self.atlas.state_dict().items()
                }
            )
        return tensors

    def save(self, path: str | os.PathLike[str], *, half: bool = False) -> Path:
        """Writes the model atomically (temp file in the same folder, then rename).

        Args:
            path: target ``.safetensors`` file; its folder must exist.
            half: store floating tensors as float16 (half the size; loading casts back to float32).
        """
        path = Path(path)
        if not path.parent.is_dir():
            raise ModelFileError(f"cannot save the model: folder {path.parent} does not exist")
        tensors = self.state_tensors(torch.float16 if half else torch.float32)
        digest = tensor_digest(tensors)
        self.metadata["model_id"] = f"anomalyscout-{self.resolution}-{digest[:12]}"
        header = {**self.metadata, "tensor_sha256": digest}
        write_bytes_atomic(path, save(tensors, metadata={METADATA_KEY: json.dumps(header)}))
        return path

    @classmethod
    def load(
        cls, path: str | os.PathLike[str] | None = None, device: torch.device | str = "cpu"
    ) -> AnomalyModel:
        """Reads and verifies a model file; every inconsistency is a :class:`ModelFileError` naming it.

        Args:
            path: the ``.safetensors`` file (default: :data:`DEFAULT_MODEL_PATH`).
            device: where the networks go; they are put in eval mode with gradients off.
        """
        path = Path(path) if path is not None else DEFAULT_MODEL_PATH
        if not path.is_file():
            raise ModelFileError(f"model file {path} does not exist")
        header, tensors = _read(path)
        metadata = _check_metadata(header, path)
        try:
            architecture = ArchitectureConfig.from_dict(metadata["architecture"])
            window = HUWindow.from_dict(metadata["preprocessing"])
        except AnomalyScoutError as error:
            raise ModelFileError(f"{path}: invalid metadata: {error}") from None
        if metadata.get("resolution") != architecture.resolution:
            raise ModelFileError(
                f"{path}: resolution {metadata.get('resolution')} does not match the architecture's "
                f"{architecture.resolution}"
            )
        if tensor_digest(tensors) != metadata.pop("tensor_sha256"):
            raise ModelFileError(f"{path}: the tensors do not match their SHA-256 (file modified or corrupt)")
        model = cls.create(architecture, window=window, position_method=metadata["preprocessing"]["position"])
        for prefix, net in model.networks().items():
            _load_network(net, prefix, tensors, path)
        if position_store.METADATA_KEY in metadata:
            model.position_regressor = position_store.regressor_from_tensors(
                tensors, metadata[position_store.METADATA_KEY], path
            )
        known = (*NETWORKS, position_store.PREFIX) if model.position_regressor is not None else NETWORKS
        if HEAD_KEY in metadata:
            model.head = _load_part(
                metadata[HEAD_KEY], tensors, path, HEAD_KEY, head_from_metadata, "anomaly-map head"
            )
            known = (*known, HEAD_KEY)
        if DENOISER_KEY in metadata:
            model.denoiser = _load_part(
                metadata[DENOISER_KEY], tensors, path, DENOISER_KEY, denoiser_from_metadata, "denoiser"
            )
            known = (*known, DENOISER_KEY)
        if ATLAS_KEY in metadata:
            model.atlas = _load_atlas(metadata[ATLAS_KEY], architecture.resolution, tensors, path)
            known = (*known, ATLAS_PREFIX)
        if model.head is not None and model.head.config.use_atlas:
            if model.atlas is None:
                raise ModelFileError(
                    f"{path}: its anomaly-map head reads a position atlas the file does not hold"
                )
            model.head.read_atlas(model.atlas)
        extra = sorted(name for name in tensors if name.split(".", 1)[0] not in known)
        if extra:
            raise ModelFileError(f"{path}: unexpected tensors {', '.join(extra[:5])}")
        model.metadata = metadata
        model.to(device)
        for net in model.networks().values():
            net.eval().requires_grad_(False)
        return model


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - not a dict
    except Exception as error:  # noqa: BLE001 - safetensors raises its own and OS errors; all mean "unreadable"
        raise ModelFileError(f"{path} is not a readable safetensors model file: {error}") from None
    return header, tensors


def _check_metadata(header: dict[str, str], path: Path) -> dict[str, Any]:
    if METADATA_KEY not in header:
        raise ModelFileError(f"{path} has no AnomalyScout metadata (is it an AnomalyScout model?)")
    try:
        metadata = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise ModelFileError(f"{path}: metadata is not valid JSON ({error})") from None
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{path}: metadata must be a JSON object")
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model format version {version!r} is not supported by this AnomalyScout "
            f"(it reads version {FORMAT_VERSION})"
        )
    missing = [
        key for key in ("architecture", "resolution", "preprocessing", "tensor_sha256") if key not in metadata
    ]
    if missing:
        raise ModelFileError(f"{path}: metadata lacks {', '.join(missing)}")
    position = (
        metadata["preprocessing"].get("position") if isinstance(metadata["preprocessing"], dict) else None
    )
    if position not in POSITION_METHODS:
        raise ModelFileError(f"{path}: unknown slice-position method {position!r}")
    return metadata


def _load_part(
    info: Any, tensors: dict[str, torch.Tensor], path: Path, key: str, build: Any, what: str
) -> Any:
    """The network ``build(info)`` with its ``key.*`` tensors, in eval mode without gradients: the head and
    the denoiser, whose metadata entries each say how to build them."""
    try:
        part = build(info)
    except AnomalyScoutError as error:
        raise ModelFileError(f"{path}: invalid {what} settings: {error}") from None
    _load_network(part, key, tensors, path)
    return part.eval().requires_grad_(False)


def _load_atlas(info: Any, resolution: int, tensors: dict[str, torch.Tensor], path: Path) -> PositionAtlas:
    try:
        atlas = PositionAtlas.from_metadata(info, resolution)
    except AnomalyScoutError as error:
        raise ModelFileError(f"{path}: invalid position atlas settings: {error}") from None
    _load_network(atlas, ATLAS_PREFIX, tensors, path)
    return atlas.eval()


def _load_network(net: nn.Module, prefix: str, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = net.state_dict()
    stored = {name[len(prefix) + 1 :]: t for name, t in tensors.items() if name.startswith(prefix + ".")}
    missing = sorted(set(expected) - set(stored))
    if missing:
        raise ModelFileError(f"{path}: missing tensors {', '.join(f'{prefix}.{n}' for n in missing[:5])}")
    extra = sorted(set(stored) - set(expected))
    if extra:
        raise ModelFileError(f"{path}: unexpected tensors {', '.join(f'{prefix}.{n}' for n in extra[:5])}")
    for name, tensor in stored.items():
        if tensor.shape != expected[name].shape:
            raise ModelFileError(
                f"{path}: tensor {prefix}.{name} has shape {tuple(tensor.shape)}, the architecture needs "
                f"{tuple(expected[name].shape)}"
            )
        stored[name] = tensor.to(expected[name].dtype)
    net.load_state_dict(stored)


def stored_in_half(path: str | os.PathLike[str]) -> bool:
    """Whether the model file keeps its weights as float16, so that a command re-saving it keeps them so."""
    with safe_open(str(path), framework="pt") as handle:
        first = next(iter(handle.keys()))
        return handle.get_slice(first).get_dtype() == "F16"
