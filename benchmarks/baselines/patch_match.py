"""Baseline (probe): is each patch like some normal patch from the same place in the body?

The atlas models every pixel at a position by one mean and one spread, so bowel gas, which is sometimes here
and sometimes there, widens the spread until a lesion fits inside it; the GAN must redraw the gas where this
patient has it, and cannot. A nearest-neighbour match asks a weaker question that multimodal anatomy
answers well: is there a *normal* patch, from a training slice near this position and within a few pixels
of this place, that looks like this one? Gas in one patient matches gas in another; a lesion, a fluid
layer or a warped organ edge matches nothing. It is PatchCore's memory bank (Roth et al., 2022) on raw
intensities, searched locally, as non-local means searches for similar patches.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.aggregation import slice_scores
from benchmarks.detectors import Detection
from benchmarks.slices import SliceSet

__all__ = ["LocalPatchMatch"]


class LocalPatchMatch:
    """Per pixel, the RMS difference of its patch to the best-matching normal patch nearby.

    Args:
        patch: patch side in model pixels (odd).
        search: largest shift searched, in pixels, each way.
        step: shift between searched offsets, in pixels.
        bank: how many training slices nearest in position are searched per test slice.
        scale: RMS difference (normalised units) that maps to 1 (pixel AP clips maps to [0, 1]).
    """

    name = "patch-match"

    def __init__(self, patch: int = 7, search: int = 6, step: int = 2, bank: int = 24, scale: float = 0.5):
        if patch < 1 or patch % 2 == 0 or search < 0 or step < 1 or bank < 1 or scale <= 0:
            raise ValueError("patch must be odd and positive; search >= 0; step, bank and scale positive")
        self.patch, self.search, self.step, self.bank, self.scale = patch, search, step, bank, scale
        self.images: torch.Tensor | None = None
        self.positions: np.ndarray | None = None

    def fit(self, train: SliceSet) -> None:
        """Keep the normal slices: the memory bank is the training set itself."""
        if len(train) == 0:
            raise ValueError("patch matching needs at least one training slice")
        self.images = torch.from_numpy(np.where(train.body, train.images, -1.0).astype(np.float32))
        self.positions = np.asarray(train.positions, dtype=np.float64)

    def distance(self, image: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        """Smallest mean squared patch difference over bank slices and shifts, per pixel ``(H, W)``."""
        pad = self.search
        padded = F.pad(bank[:, None], (pad, pad, pad, pad), mode="replicate")
        size = image.shape[-1]
        best = torch.full(image.shape, float("inf"))
        for dy in range(-self.search, self.search + 1, self.step):
            for dx in range(-self.search, self.search + 1, self.step):
                shifted = padded[:, :, pad + dy : pad + dy + size, pad + dx : pad + dx + size]
                squared = (shifted - image) ** 2
                mean = F.avg_pool2d(squared, self.patch, stride=1, padding=self.patch // 2)
                best = torch.minimum(best, mean.amin(dim=(0, 1)))
        return best

    def detect(self, slices: SliceSet) -> Detection:
        if self.images is None or self.positions is None:
            raise RuntimeError("fit before detect")
        maps = np.zeros(slices.images.shape, dtype=np.float32)
        with torch.inference_mode():
            for i in range(len(slices)):
                nearest = np.argsort(np.abs(self.positions - slices.positions[i]), kind="stable")[: self.bank]
                image = torch.from_numpy(np.where(slices.body[i], slices.images[i], -1.0).astype(np.float32))
                rms = self.distance(image, self.images[nearest]).sqrt().numpy()
                maps[i] = np.where(slices.body[i], rms / self.scale, 0.0)
        return Detection(maps=maps, slice_scores=slice_scores(maps, slices.body))
