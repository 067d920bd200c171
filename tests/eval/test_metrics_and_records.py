"""Metrics agree with their definitions and with eva's metrics batch by batch; records round-trip; the suite score is the headline mean."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pluto.eval.metrics import balanced_accuracy, dice_without_background, eva_monitor_score, eva_predictions, pearson_per_column
from pluto.eval.records import EVAL_SUITE_VERSION, EvalRecord, SuiteResult, suite_score


@pytest.mark.parametrize("seed", range(5))
def test_balanced_accuracy_is_mean_recall_over_true_classes(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, 200)
    pred = np.where(rng.random(200) < 0.6, y, rng.integers(0, 7, 200))  # includes classes absent from y
    recalls = [np.mean(pred[y == c] == c) for c in np.unique(y)]  # the definition, by hand
    assert balanced_accuracy(y, pred) == pytest.approx(np.mean(recalls), abs=1e-12)


def _eva_metric_by_batches(metric, logits: torch.Tensor, target: torch.Tensor, batch: int) -> float:
    """A torchmetrics/eva metric updated batch by batch, as eva's module does on each loader batch."""
    for lo, t in zip(logits.split(batch), target.split(batch)):
        metric.update(lo, t)
    return float(metric.compute())


@pytest.mark.parametrize("seed", range(3))
def test_eva_monitor_score_is_torchmetrics_macro_accuracy(seed):
    from torchmetrics.classification import MulticlassAccuracy

    rng = np.random.default_rng(seed)
    target = torch.as_tensor(rng.integers(0, 4, 300))  # class 4 never occurs, but is predicted
    logits = torch.as_tensor(rng.normal(size=(300, 5))) + 2 * nn.functional.one_hot(target, 5)
    ours = eva_monitor_score(eva_predictions(logits, 64), target, 5, binary=False)
    assert ours == pytest.approx(_eva_metric_by_batches(MulticlassAccuracy(num_classes=5), logits, target, 64), abs=1e-6)
    assert ours < balanced_accuracy(target, logits.argmax(1))  # the predicted-but-absent class counts 0 here, not in sklearn


def test_eva_binary_score_and_predictions_follow_eva_batch_by_batch():
    from eva.core.metrics import BinaryBalancedAccuracy

    rng = np.random.default_rng(0)
    target = torch.as_tensor(rng.integers(0, 2, 256))
    logits = torch.as_tensor(rng.normal(size=256) + 1.5 * (2 * target.numpy() - 1), dtype=torch.float32)
    logits[128:192] = torch.linspace(0.05, 0.95, 64)  # a batch of logits all in [0, 1]: taken as probabilities
    pred = eva_predictions(logits, 64)
    assert pred[128:192].tolist() == (logits[128:192] > 0.5).long().tolist()
    assert torch.equal(pred[:128], (logits[:128] > 0).long())
    expected = _eva_metric_by_batches(BinaryBalancedAccuracy(), logits, target, 64)
    assert eva_monitor_score(pred, target, 2, binary=True) == pytest.approx(expected, abs=1e-6)
    assert eva_monitor_score(torch.ones(4, dtype=torch.long), torch.ones(4, dtype=torch.long), 2, binary=True) == 0.5  # eva: absent class 0


def test_balanced_accuracy_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="equal non-empty"):
        balanced_accuracy([0, 1], [0])


def test_pearson_per_column_matches_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 4)), rng.normal(size=(50, 4))
    b[:, 0] += 2 * a[:, 0]
    expected = [np.corrcoef(a[:, j], b[:, j])[0, 1] for j in range(4)]
    np.testing.assert_allclose(pearson_per_column(a, b), expected, rtol=1e-10)
    a[:, 3] = 1.0
    assert np.isnan(pearson_per_column(a, b)[3])


def test_dice_ignores_background_and_empty_classes():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2, :2] = 1
    pred = target.clone()
    pred[0, 0, 0] = 0  # 3 of 4 class-1 pixels found
    assert dice_without_background(pred, target, n_classes=3) == pytest.approx(2 * 3 / (3 + 4))  # class 2 absent: skipped


def _rec(task, mode, values):
    return EvalRecord(task, task, "test", "balanced_accuracy", values, tuple(range(len(values))), "quick", "abc", 16, mode)


def test_record_round_trip_and_stats():
    r = _rec("bach", "cls", [0.5, 0.7])
    d = r.to_dict()
    assert d["mean"] == pytest.approx(0.6) and d["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert d["suite_version"] == EVAL_SUITE_VERSION
    assert EvalRecord.from_dict(d) == r
    with pytest.raises(ValueError, match="one value per seed"):
        EvalRecord("t", "d", "s", "m", (0.1,), (0, 1), "quick", "x", 16, "cls")


def test_suite_score_is_mean_of_headline_mode():
    recs = [_rec("a", "cls", [0.6, 0.8]), _rec("b", "cls", [0.4]), _rec("a", "cls+mean", [1.0])]
    assert suite_score(recs) == pytest.approx((0.7 + 0.4) / 2)
    res = SuiteResult(tuple(recs), suite_score(recs))
    assert SuiteResult.from_dict(res.to_dict()) == res
    assert res.max_seed_std == pytest.approx(np.std([0.6, 0.8], ddof=1))
