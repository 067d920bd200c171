"""Metrics in torch/numpy (no scikit-learn on the hot path); each agrees with the reference library (tests).
Dice is eva's MONAI wrapper (lazy import), the exact metric eva reports."""

from __future__ import annotations

import numpy as np
import torch


def balanced_accuracy(y_true, y_pred) -> float:
    """Mean per-class recall over the classes present in `y_true` (same as sklearn's balanced_accuracy_score)."""
    t = torch.as_tensor(np.asarray(y_true)).long().flatten()
    p = torch.as_tensor(np.asarray(y_pred)).long().flatten()
    if t.numel() == 0 or t.numel() != p.numel():
        raise ValueError(f"balanced_accuracy: need equal non-empty label arrays, got {t.numel()} and {p.numel()}")
    classes = torch.unique(t)
    recalls = torch.stack([((p == c) & (t == c)).sum().double() / (t == c).sum() for c in classes])
    return float(recalls.mean())


def pearson_per_column(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Pearson r per column (gene) of (N, G) arrays; a constant column gives NaN (HEST reports the mean of the rest)."""
    a = np.asarray(y_true, dtype=np.float64)
    b = np.asarray(y_pred, dtype=np.float64)
    a, b = a - a.mean(0), b - b.mean(0)
    denom = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(0) / denom, np.nan)


def dice_without_background(pred: torch.Tensor, target: torch.Tensor, n_classes: int, ignore_index: int | None = None) -> float:
    """eva's headline segmentation metric (CoNSeP/MoNuSAC): MONAI dice per image and foreground class,
    classes absent from an image's target skipped (`ignore_empty`; predicting them there costs
    nothing), then averaged.

    Integer label maps (B, H, W); `ignore_index` drops that class's channel (MoNuSAC's "Ambiguous", as
    eva's monusac.yaml). Needs kaiko-eva[vision] (MONAI).
    """
    from eva.vision.metrics.segmentation import MonaiDiceScore

    metric = MonaiDiceScore(num_classes=n_classes, include_background=False, ignore_empty=True, ignore_index=ignore_index)
    metric.update(torch.as_tensor(pred).long(), torch.as_tensor(target).long())
    return float(metric.compute())
