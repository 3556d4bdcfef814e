"""The small 2-D liver segmenter used by the benchmark and by the active-learning baselines."""

from __future__ import annotations

from AnomalyScoutLib.segmentation.training import (
    dice_bce_loss,
    predict_probabilities,
    predictive_entropy,
    segmentation_features,
    train_segmenter,
)
from AnomalyScoutLib.segmentation.unet import UNet

__all__ = [
    "UNet",
    "dice_bce_loss",
    "predict_probabilities",
    "predictive_entropy",
    "segmentation_features",
    "train_segmenter",
]
