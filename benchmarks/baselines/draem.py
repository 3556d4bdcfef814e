"""Baseline (5): DRAEM (Zavrtanik et al., ICCV 2021) with its own reconstruction network.

DRAEM is the strongest method on BMAD's liver-CT benchmark (issue 16): a *reconstructive* network learns to
turn a slice with a synthetic anomaly back into the normal slice (L2 + SSIM), and a *discriminative* network,
trained jointly, reads the slice beside that reconstruction and segments the anomaly (focal loss). It is the
same idea as our product's head, with one difference: the pseudo-normal comes from a network trained to undo
anomalies, not from a position-conditioned GAN behind an encoder.

To make the comparison say what the GAN adds and nothing else, this row keeps everything else ours: the
discriminative network is the product's :class:`~AnomalyScoutLib.anomaly_map.head.AnomalyHead` (same
widths, inputs and slice score), the synthetic anomalies are the head's generic families
(:mod:`AnomalyScoutLib.anomaly_map.synthesis`, ``poisson_patch`` held out for validation, never the
phantom's inserters), and the training loop is :class:`~AnomalyScoutLib.anomaly_map.training.HeadTrainer`'s
with the reconstructive network trained in the same step. The reconstructive network is DRAEM's
encoder-decoder without skip connections (so an anomaly cannot be copied through), narrowed from DRAEM's
128 base channels to ``width`` for two CPU cores.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from AnomalyScoutLib.anomaly_map.data import NormalSlices
from AnomalyScoutLib.anomaly_map.head import AnomalyHead, HeadConfig
from AnomalyScoutLib.anomaly_map.training import HeadTrainer, HeadTrainingOptions, map_loss
from AnomalyScoutLib.inversion import ssim_map
from AnomalyScoutLib.preprocessing import HUWindow
from benchmarks.detectors import Detection
from benchmarks.slices import SliceSet

__all__ = ["DraemDetector", "ReconstructiveNet"]


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ReconstructiveNet(nn.Module):
    """DRAEM's reconstructive sub-network: four max-pool stages down, four bilinear stages up, no skips.

    Widths ``width x (1, 2, 4, 8, 8)`` from the input's resolution to 1/16 of it (side a multiple of 16).
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width, 8 * width]
        self.down = nn.ModuleList(_double_conv(c_in, c_out) for c_in, c_out in zip([1, *widths[:-1]], widths))
        self.up = nn.ModuleList(
            _double_conv(c_in, c_out) for c_in, c_out in zip(widths[:0:-1], widths[-2::-1])
        )
        self.out = nn.Conv2d(width, 1, 1)
        self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, H, W)`` slices in [-1, 1] -> their reconstructions ``(N, H, W)``."""
        x = images[:, None].contiguous(memory_format=torch.channels_last)
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
        for block in self.up:
            x = block(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
        return self.out(x)[:, 0]


def reconstruction_loss(reconstruction: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """DRAEM's reconstruction loss: L2 plus 1 - SSIM, over the whole slice."""
    return F.mse_loss(reconstruction, normal) + (1.0 - ssim_map(reconstruction, normal)).mean()


class _JointTrainer(HeadTrainer):
    """:class:`HeadTrainer` whose reconstruction is ``reconstructive``, trained in the same step as the head
    (DRAEM trains both networks together; the head's loss also reaches the reconstructive network)."""

    def __init__(
        self,
        head: AnomalyHead,
        reconstructive: ReconstructiveNet,
        train: NormalSlices,
        validation: NormalSlices,
        options: HeadTrainingOptions,
        window: HUWindow,
        device: torch.device,
    ) -> None:
        self.reconstructive = reconstructive.to(device)
        super().__init__(head, train, validation, self._reconstruct, options, window, device)
        self.best_reconstructive: dict[str, torch.Tensor] | None = None

    def _trained_parameters(self) -> list[nn.Parameter]:
        return [*super()._trained_parameters(), *self.reconstructive.parameters()]

    @torch.no_grad()
    def _reconstruct(self, images: torch.Tensor, positions: torch.Tensor, body: torch.Tensor) -> torch.Tensor:
        was_training = self.reconstructive.training
        self.reconstructive.eval()
        out = self.reconstructive(images.to(self.device))
        self.reconstructive.train(was_training)
        return out

    def validate(self) -> dict[str, float]:
        """The parent's validation, on reconstructions made by the reconstructive network as it now is."""
        v = self._validation
        v.reconstructions = self._reconstruct(v.images, v.positions, v.body)
        return super().validate()

    def train_step(self) -> float:
        data = self.train_set
        index, families = self._draw()
        made = self._synthesize(data, index, families)
        images, normal, positions, body, masks = (
            t.to(self.device)
            for t in (made.images, data.images[index], data.positions[index], data.body[index], made.masks)
        )
        self.reconstructive.train()
        reconstruction = self.reconstructive(images)
        logits = self.head(images, reconstruction, positions)
        return self._optimise(
            reconstruction_loss(reconstruction, normal.float()) + map_loss(logits, masks, body)
        )

    def _checkpoint(self, loss: float, elapsed: float) -> None:
        best_before = self.best
        super()._checkpoint(loss, elapsed)
        if self.best is not best_before:  # the parent kept the head's weights of this step: keep ours too
            self.best_reconstructive = {
                k: v.detach().clone() for k, v in self.reconstructive.state_dict().items()
            }


class DraemDetector:
    """DRAEM trained on the training slices for ``minutes`` (or ``steps``); map = the head's map.

    Args:
        minutes: training time limit (0: ``steps`` alone).
        steps: optimisation steps at most (the cosine schedule's length).
        width: the reconstructive network's base width.
        head_width: the head's first width (then 2x and 4x: the product head is 16).
        validate_every: steps between validations on the held-out family (the best is kept).
        seed: seeds the initialisation, the batches and the synthesis.
    """

    name = "DRAEM"

    def __init__(
        self,
        minutes: float = 30.0,
        steps: int = 100_000,
        width: int = 16,
        head_width: int = 16,
        validate_every: int = 100,
        seed: int = 0,
    ) -> None:
        if minutes < 0 or steps < 1 or width < 1 or head_width < 1:
            raise ValueError("minutes >= 0, steps >= 1 and positive widths are needed")
        self.minutes, self.steps, self.width, self.head_width = minutes, steps, width, head_width
        self.validate_every, self.seed = validate_every, seed
        self.reconstructive: ReconstructiveNet | None = None
        self.head: AnomalyHead | None = None
        self.training: dict[str, object] = {}

    def fit(self, train: SliceSet) -> None:
        """Joint training on the normal slices; the last training case is kept for validation."""
        slices = NormalSlices(
            torch.from_numpy(train.images),
            torch.from_numpy(train.condition),
            torch.from_numpy(train.body),
            torch.from_numpy(train.case.astype(np.int64)),
        )
        training, validation = slices.split(1)
        torch.manual_seed(self.seed)
        w = self.head_width
        head = AnomalyHead(HeadConfig(channels=(w, 2 * w, 4 * w)))
        reconstructive = ReconstructiveNet(self.width)
        options = HeadTrainingOptions(
            steps=self.steps, max_minutes=self.minutes, validate_every=self.validate_every, seed=self.seed
        )
        trainer = _JointTrainer(
            head, reconstructive, training, validation, options, HUWindow(), torch.device("cpu")
        )
        trainer.train(progress=True)
        if trainer.best_reconstructive is not None:
            reconstructive.load_state_dict(trainer.best_reconstructive)
        self.reconstructive, self.head = reconstructive.eval(), head.eval()
        self.training = {"steps_done": trainer.step, "best": trainer.best}

    @torch.no_grad()
    def detect(self, slices: SliceSet, batch_size: int = 64) -> Detection:
        """The head's map on DRAEM's reconstruction and its top-k slice score."""
        if self.reconstructive is None or self.head is None:
            raise RuntimeError("fit DRAEM before detect")
        maps, scores = [], []
        for i in range(0, len(slices), batch_size):
            images = torch.from_numpy(slices.images[i : i + batch_size])
            positions = torch.from_numpy(slices.condition[i : i + batch_size])
            body = torch.from_numpy(slices.body[i : i + batch_size])
            batch_maps = self.head.anomaly_map(images, self.reconstructive(images), positions, body)
            maps.append(batch_maps.numpy())
            scores.append(self.head.slice_scores(batch_maps, body).numpy())
        return Detection(maps=np.concatenate(maps).astype(np.float32), slice_scores=np.concatenate(scores))
