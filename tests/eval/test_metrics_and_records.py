"""Metrics agree with the reference libraries; records round-trip; the suite score is the headline mean."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pluto.eval.metrics import balanced_accuracy, dice_without_background, pearson_per_column
from pluto.eval.records import EVAL_SUITE_VERSION, EvalRecord, SuiteResult, suite_score


@pytest.mark.parametrize("seed", range(5))
def test_balanced_accuracy_matches_sklearn(seed):
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, 200)
    pred = np.where(rng.random(200) < 0.6, y, rng.integers(0, 7, 200))  # includes classes absent from y
    assert balanced_accuracy(y, pred) == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)


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
