"""Encoder training with the GAN frozen (f-AnoGAN's izi_f recipe, adapted to W+), and the final model file.

Each step has two parts:

* real slices: ``ws = E(x, p)``, ``x' = G(ws)`` with the frozen constant noise; loss = pixel MSE + kappa *
  discriminator-feature MSE + a regulariser pulling ws towards the generator's mean latent at p;
* generated slices with known codes (cheap, exact supervision): ``x = G(ws*)`` and MSE(E(x), ws*).

The generator is the GAN run's EMA generator; the model file written at the end holds it with the encoder
and the discriminator, ready for ``anomalyscout score``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from AnomalyScoutLib import __version__
from AnomalyScoutLib.cancellation import CancelFlag
from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.nets.architecture import ArchitectureConfig
from AnomalyScoutLib.preprocessing import HUWindow
from AnomalyScoutLib.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from AnomalyScoutLib.train.data import SliceSet
from AnomalyScoutLib.train.losses import encoder_loss
from AnomalyScoutLib.train.placement import INDEX

__all__ = [
    "EncoderOptions",
    "EncoderTrainer",
    "GanRun",
    "load_gan_run",
    "narrow_code_space",
    "training_metadata",
    "warm_start_encoder",
]


@dataclass(frozen=True)
class GanRun:
    """A finished (or interrupted) ``train-gan`` run: its settings and a model holding its G (EMA) and D."""

    settings: dict[str, Any]
    model: AnomalyModel
    summary: dict[str, Any]


def load_gan_run(run_dir: str | Path) -> GanRun:
    """Reads a run folder's options and checkpoint into an :class:`AnomalyModel` (encoder untrained).

    Raises:
        ConfigError: the folder is not a train-gan run or its checkpoint is unreadable.
    """
    run_dir = Path(run_dir)
    options_path = run_dir / "training_options.json"
    if not options_path.is_file():
        raise ConfigError(f"--gan {run_dir} is not a train-gan run folder (no training_options.json)")
    settings = json.loads(options_path.read_text())
    checkpoint = load_checkpoint(run_dir / CHECKPOINT_NAME)
    architecture = ArchitectureConfig.from_dict(settings["architecture"])
    model = AnomalyModel.create(
        architecture,
        window=HUWindow.from_dict(settings["preprocessing"]),
        position_method=settings["preprocessing"]["position"],
    )
    checkpoint.restore_module("G_ema", model.generator)
    checkpoint.restore_module("D", model.discriminator)
    model.encoder.anchor_to(model.generator)
    state = checkpoint.state
    summary = {
        "kimg": state["images_seen"] / 1000,
        "iterations": state["step"],
        "wall_time_s": round(state["wall_s"], 1),
        "images_per_s": round(state["images_seen"] / max(state["wall_s"], 1e-9), 2),
        "options": state["options"],
    }
    return GanRun(settings, model, summary)


def warm_start_encoder(model: AnomalyModel, init_path: str | Path) -> str:
    """Copies the encoder of an existing model file into ``model`` and re-anchors it to ``model``'s generator.

    After a GAN has trained further, its latent space has moved, but the encoder's image features are still
    good: starting from the old encoder needs a fraction of the steps of a fresh one. The mean-latent table
    is re-tabulated from the new generator, so the encoder's offsets start from the right origin.

    Returns:
        The id of the model the encoder came from (recorded in the training metadata).

    Raises:
        ConfigError: the file's architecture differs from the GAN's.
    """
    source = AnomalyModel.load(init_path, "cpu")
    if source.architecture != model.architecture:
        raise ConfigError(
            f"--init {init_path}: its architecture {source.architecture.to_dict()} differs from the GAN "
            f"run's {model.architecture.to_dict()}"
        )
    model.encoder.load_state_dict(source.encoder.state_dict())
    model.encoder.anchor_to(model.generator)
    return source.model_id


@dataclass(frozen=True)
class EncoderOptions:
    """Hyper-parameters of encoder training.

    Attributes:
        kimg: thousands of real slices to train on.
        batch: real slices per step (the generated half of a step has the same size).
        lr: Adam learning rate (equalised-lr layers, so StyleGAN-like values).
        kappa: weight of the discriminator-feature residual (f-AnoGAN: 1).
        latent_weight: weight of ``mean ||ws - mean_w(p)||^2``.
        synthetic_weight: weight of the known-code loss on generated slices (0 = off).
        generator_lr: Adam learning rate of the generator's synthesis network, trained together with the
            encoder on the real-slice reconstruction loss (0 = frozen generator, the f-AnoGAN recipe). A GAN
            that stopped early (or partly collapsed) renders only a few "typical" slices; tuning it teaches
            it to render the anatomy of every normal training slice, which is what a pseudo-normal
            reconstruction needs. The mapping network stays frozen, so the encoder's mean-latent anchors
            and the generated half of each step stay valid.
        max_minutes: stop early after this much wall time (0 = no limit); the model is still written.
        seed: data order and generated codes.
    """

    kimg: float = 20.0
    batch: int = 16
    lr: float = 0.002
    kappa: float = 1.0
    latent_weight: float = 0.01
    synthetic_weight: float = 1.0
    generator_lr: float = 0.0
    max_minutes: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kimg <= 0 or self.batch < 1 or self.lr <= 0:
            raise ConfigError(
                f"kimg, batch and lr must be positive, got {self.kimg}, {self.batch}, {self.lr}"
            )
        if (
            min(self.kappa, self.latent_weight, self.synthetic_weight, self.generator_lr, self.max_minutes)
            < 0
        ):
            raise ConfigError(
                "kappa, latent_weight, synthetic_weight, generator_lr and max_minutes must be >= 0"
            )


class EncoderTrainer:
    """Trains ``model.encoder`` against the frozen ``model.discriminator`` and the generator (frozen, or its
    synthesis network tuned along with the encoder when ``options.generator_lr`` > 0)."""

    def __init__(
        self, model: AnomalyModel, options: EncoderOptions, data: SliceSet, device: torch.device
    ) -> None:
        self.model, self.options, self.data, self.device = model, options, data, device
        model.to(device)
        for frozen in (model.generator, model.discriminator):
            frozen.eval().requires_grad_(False)
        model.encoder.train().requires_grad_(True)
        groups = [{"params": list(model.encoder.parameters()), "lr": options.lr}]
        if options.generator_lr > 0:
            model.generator.synthesis.requires_grad_(True)
            groups.append(
                {"params": list(model.generator.synthesis.parameters()), "lr": options.generator_lr}
            )
        self.optimizer = torch.optim.Adam(groups, betas=(0.9, 0.99))
        self.sampler = torch.Generator().manual_seed(options.seed)
        torch.manual_seed(options.seed)
        self.step, self.images_seen, self.wall_s = 0, 0, 0.0
        self.last: dict[str, float] = {}

    def train_step(self) -> dict[str, float]:
        generator, discriminator, encoder = self.model.generator, self.model.discriminator, self.model.encoder
        n = self.options.batch
        real, position = self.data.batch(n, self.sampler, self.device)
        ws = encoder(real, position)
        reconstruction = generator.synthesis(ws, noise_mode="const")
        terms = encoder_loss(
            real,
            reconstruction,
            discriminator.features(real, position),
            discriminator.features(reconstruction, position),
            ws,
            encoder.mean_w(position),
            kappa=self.options.kappa,
            latent_weight=self.options.latent_weight,
        )
        total = terms["total"]
        if self.options.synthetic_weight > 0:
            with torch.no_grad():
                known = generator.mapping(torch.randn(n, generator.z_dim, device=self.device), position)
                synthetic = generator.synthesis(known, noise_mode="const")
            terms["synthetic"] = F.mse_loss(encoder(synthetic, position), known)
            total = total + self.options.synthetic_weight * terms["synthetic"]
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.step += 1
        self.images_seen += n
        return {name: value.item() for name, value in terms.items()}

    def train(self, cancel: CancelFlag | None = None, progress: bool = True) -> bool:
        """Trains until ``kimg`` or ``max_minutes``; False when cancelled."""
        total = int(self.options.kimg * 1000)
        deadline = (
            time.monotonic() + self.options.max_minutes * 60 if self.options.max_minutes else float("inf")
        )
        bar = tqdm(total=total, unit="img", desc="train-encoder", disable=not progress, smoothing=0.05)
        try:
            while self.images_seen < total and time.monotonic() < deadline:
                if cancel is not None and cancel.is_set:
                    return False
                start = time.monotonic()
                self.last = self.train_step()
                self.wall_s += time.monotonic() - start
                bar.update(self.options.batch)
                if self.step % 10 == 0:
                    bar.set_postfix({k: f"{v:.4f}" for k, v in self.last.items() if k != "total"})
        finally:
            bar.close()
        return True

    def summary(self) -> dict[str, Any]:
        """The encoder half of the model file's ``training`` metadata."""
        return {
            "kimg": self.images_seen / 1000,
            "iterations": self.step,
            "wall_time_s": round(self.wall_s, 1),
            "images_per_s": round(self.images_seen / max(self.wall_s, 1e-9), 2),
            "final_losses": {k: round(v, 5) for k, v in self.last.items()},
            "options": asdict(self.options),
        }


def training_metadata(
    run: GanRun, trainer: EncoderTrainer, data: SliceSet, placement: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The model file's ``training`` entry: data, GAN and encoder summaries, device and code version, and
    how the slices were placed (``placement``: the encoder's, ``gan.placement``: the GAN's; runs older than
    the record placed by index)."""
    return {
        "data": {**run.settings.get("data", {}), "encoder_data": data.summary()},
        "placement": placement or INDEX.record(),
        "gan": {**run.summary, "placement": run.settings.get("placement", INDEX.record())},
        "encoder": trainer.summary(),
        "device": str(trainer.device),
        "threads": torch.get_num_threads(),
        "code_version": __version__,
    }


def narrow_code_space(model: AnomalyModel, offset_scale: float, single_w: bool) -> None:
    """Narrow ``model``'s encoder (:meth:`Encoder.constrain`) and record how in
    ``training.encoder.code_space``, the one place readers look (``train-encoder --offset-scale``,
    ``benchmarks/code_space.py``)."""
    model.encoder.constrain(offset_scale, single_w)
    encoder_training = model.metadata.setdefault("training", {}).setdefault("encoder", {})
    encoder_training["code_space"] = {"offset_scale": offset_scale, "single_w": single_w}
