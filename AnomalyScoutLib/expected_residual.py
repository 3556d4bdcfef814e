"""The residual a *normal* slice is expected to leave, and the residual measured against it.

Even a good pseudo-normal reconstruction misses some normal tissue by a lot: bowel gas, organ edges and bone
borders are drawn a few pixels off or in another pattern. A raw residual's highest values, which the slice
score reads, sit there, so the slice score measures how much gas and how many edges a slice has, and a lesion
inside smooth tissue (or ascites, which *removes* gas) scores below a normal slice. Dividing each pixel's
residual by the residual that normal pixels which *look the same in the reconstruction* leave (the same
intensity, the same nearness to an edge) removes that: what stays high is a residual that normal tissue of
that appearance does not produce. It is a lookup table fitted on normal slices only (heteroscedastic
normalisation; no anomaly is needed to fit it), small enough to live in the model file as JSON.

Intensities are the model's normalised HU in [-1, 1]; residuals are the (smoothed) |slice - reconstruction|.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["ExpectedResidual", "appearance_bins"]

#: Sobel kernels (x, y) for the reconstruction's edge strength.
_SOBEL = torch.tensor([[[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]])


def appearance_bins(
    reconstruction: torch.Tensor, intensity_bins: int, edge_bins: int, edge_reach_px: int
) -> torch.Tensor:
    """Per pixel of ``(N, H, W)`` reconstructions, the index of its appearance class (long ``(N, H, W)``):
    intensity bin x edge bin, where the edge strength is the largest Sobel gradient within ``edge_reach_px``
    (a pixel next to an edge is as uncertain as the edge itself: edges are drawn a few pixels off)."""
    x = reconstruction.float().unsqueeze(1)
    kernels = torch.stack([_SOBEL, _SOBEL.transpose(1, 2)]).to(x)
    gradient = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernels).pow(2).sum(1, keepdim=True).sqrt()
    if edge_reach_px > 0:
        size = 2 * edge_reach_px + 1
        gradient = F.max_pool2d(gradient, size, stride=1, padding=edge_reach_px)
    gradient = gradient.squeeze(1)
    intensity = ((x.squeeze(1) + 1.0) / 2.0 * intensity_bins).long().clamp(0, intensity_bins - 1)
    # Log-spaced edge bins: a Sobel magnitude of 4 (a jump across the whole window) is the top bin.
    edge = (torch.log1p(gradient * 10.0) / math.log1p(40.0) * edge_bins).long().clamp(0, edge_bins - 1)
    return intensity * edge_bins + edge


@dataclass
class ExpectedResidual:
    """Mean normal residual per appearance class of the reconstruction, and residuals divided by it.

    Attributes:
        table: ``intensity_bins * edge_bins`` expected residuals (normalised-HU units).
        intensity_bins, edge_bins, edge_reach_px: the appearance classes (:func:`appearance_bins`).
        prior_pixels: weight of the overall mean in each class's estimate, so that rare classes (few normal
            pixels) fall back to it instead of to a noisy or zero mean.
    """

    table: list[float]
    intensity_bins: int = 24
    edge_bins: int = 10
    edge_reach_px: int = 2
    prior_pixels: float = 20.0

    @classmethod
    def fit(
        cls,
        reconstructions: torch.Tensor,
        residuals: torch.Tensor,
        masks: torch.Tensor,
        intensity_bins: int = 24,
        edge_bins: int = 10,
        edge_reach_px: int = 2,
        prior_pixels: float = 20.0,
    ) -> ExpectedResidual:
        """Fits the table on ``(N, H, W)`` reconstructions of *normal* slices, their residuals and body masks.

        Raises:
            ValueError: no pixel inside the masks, or shapes that differ.
        """
        if not reconstructions.shape == residuals.shape == masks.shape:
            raise ValueError("reconstructions, residuals and masks must have the same (N, H, W) shape")
        classes = appearance_bins(reconstructions, intensity_bins, edge_bins, edge_reach_px)[masks]
        values = residuals.float()[masks]
        if values.numel() == 0:
            raise ValueError("no body pixel to fit the expected residual on")
        n = intensity_bins * edge_bins
        sums = torch.bincount(classes, values, n).double()
        counts = torch.bincount(classes, minlength=n).double()
        overall = float(values.double().mean())
        table = (sums + prior_pixels * overall) / (counts + prior_pixels)
        return cls(table.tolist(), intensity_bins, edge_bins, edge_reach_px, prior_pixels)

    def expected(self, reconstructions: torch.Tensor) -> torch.Tensor:
        """The expected normal residual at every pixel of ``(N, H, W)`` reconstructions."""
        table = torch.tensor(self.table, dtype=torch.float32, device=reconstructions.device)
        return table[
            appearance_bins(reconstructions, self.intensity_bins, self.edge_bins, self.edge_reach_px)
        ]

    def normalise(self, residuals: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        """``residuals`` in units of what normal tissue of the same appearance leaves (1 = typical)."""
        return residuals / self.expected(reconstructions).clamp_min(1e-6)

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": [round(v, 6) for v in self.table],
            "intensity_bins": self.intensity_bins,
            "edge_bins": self.edge_bins,
            "edge_reach_px": self.edge_reach_px,
            "prior_pixels": self.prior_pixels,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExpectedResidual:
        """Reads :meth:`to_dict`'s output.

        Raises:
            ValueError: the table's length does not match its bins.
        """
        expected = cls(
            [float(v) for v in data["table"]],
            int(data["intensity_bins"]),
            int(data["edge_bins"]),
            int(data["edge_reach_px"]),
            float(data["prior_pixels"]),
        )
        if len(expected.table) != expected.intensity_bins * expected.edge_bins:
            raise ValueError(
                f"expected-residual table has {len(expected.table)} entries for "
                f"{expected.intensity_bins} x {expected.edge_bins} bins"
            )
        return expected
