"""Metrics from the reference libraries, imported lazily (evaluation imports with torch + timm alone).

- `balanced_accuracy`: scikit-learn's balanced_accuracy_score, the number every record reports.
- `eva_predictions` / `eva_monitor_score`: what eva 0.4.5 selects checkpoints and stops early on, and
  reports: torchmetrics' MulticlassAccuracy (eva's default average "macro") for multiclass heads, eva's
  BinaryBalancedAccuracy for one-logit heads (eva/core/metrics/defaults/classification/*.py).
- Dice is eva's MONAI wrapper, the exact metric eva reports.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch


def balanced_accuracy(y_true, y_pred) -> float:
    """Mean per-class recall over the classes present in `y_true` (scikit-learn's balanced_accuracy_score).

    A predicted class absent from `y_true` lowers the recall of the true classes only; scikit-learn's
    warning about it is silenced (a record scores the classes the split has).
    """
    t, p = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if t.size == 0 or t.size != p.size:
        raise ValueError(f"balanced_accuracy: need equal non-empty label arrays, got {t.size} and {p.size}")
    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(t, p))


def eva_predictions(logits: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Class predictions as eva's metrics derive them from a head's outputs, batch by batch.

    (N, C) logits: argmax. (N,) logits of a one-logit head: torchmetrics' binary rule per update
    (one per loader batch of `batch_size`): a batch with any value outside [0, 1] is taken as logits
    and passed through the sigmoid, otherwise as probabilities; then thresholded at 0.5. So the
    prediction is logit > 0, except in a batch whose logits all lie in [0, 1] (logit > 0.5 there).
    """
    if logits.ndim == 2:
        return logits.argmax(1)
    out = []
    for chunk in logits.split(batch_size):
        probs = chunk if bool(((chunk >= 0) & (chunk <= 1)).all()) else chunk.sigmoid()
        out.append((probs > 0.5).long())
    return torch.cat(out)


def eva_monitor_score(pred: torch.Tensor, target: torch.Tensor, n_classes: int, binary: bool) -> float:
    """eva's monitored score of predictions (`eva_predictions`): val/BinaryBalancedAccuracy for a binary
    head, else val/MulticlassAccuracy with torchmetrics' macro average.

    Both are balanced accuracies that differ from scikit-learn's at the edges: macro accuracy also
    averages in a class that is predicted but absent from `target` (recall 0), and the binary score
    is (sensitivity + specificity) / 2 with 0 for a class absent from `target`.
    """
    from torchmetrics.functional.classification import binary_stat_scores, multiclass_accuracy

    if not binary:
        return float(multiclass_accuracy(pred, target, num_classes=n_classes, average="macro", validate_args=False))
    tp, fp, tn, fn = (float(v) for v in binary_stat_scores(pred, target, validate_args=False)[:4])
    sensitivity = tp / (tp + fn) if tp + fn else 0.0  # 0 / 0 is 0, as torchmetrics' _safe_divide
    specificity = tn / (tn + fp) if tn + fp else 0.0
    return 0.5 * (sensitivity + specificity)


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
