"""Metrics every part of AnomalyScout reports: detection quality and GAN sample quality.

- :mod:`.detection`: ROC AUC, average precision, curves, Dice and best Dice, streaming voxel-level metrics,
  Spearman correlation and bootstrap confidence intervals (pure numpy).
- :mod:`.gan_quality`: Fréchet distance, Wasserstein-1, KL divergence and mutual information of real vs
  generated slices (numpy).
- :mod:`.inception`: InceptionV3 features for FID from the optional ``fid`` extra (import it explicitly).
- :mod:`.gan_evaluation`: all GAN figures for a model against real slices, overall and per position bin
  (import it explicitly; it needs torch, the package itself only numpy).
"""

from __future__ import annotations

from AnomalyScoutLib.metrics.detection import (
    BestDice,
    ConfidenceInterval,
    RankCounts,
    VoxelScoreHistogram,
    average_precision,
    best_dice,
    bootstrap_ci,
    dice,
    precision_recall_curve,
    roc_auc,
    roc_curve,
    spearman,
)
from AnomalyScoutLib.metrics.gan_quality import (
    feature_statistics,
    frechet_distance,
    frechet_distance_from_statistics,
    kl_divergence,
    mutual_information,
    wasserstein_1d,
)

__all__ = [
    "BestDice",
    "ConfidenceInterval",
    "RankCounts",
    "VoxelScoreHistogram",
    "average_precision",
    "best_dice",
    "bootstrap_ci",
    "dice",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_statistics",
    "kl_divergence",
    "mutual_information",
    "precision_recall_curve",
    "roc_auc",
    "roc_curve",
    "spearman",
    "wasserstein_1d",
]
