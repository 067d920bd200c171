"""The linear probe's protocol: eva's constants per task, its loop mechanics, the quick preset's spread, folds.

Per-run agreement with eva's own HeadModule/Trainer: test_probe_parity.py.
"""

from __future__ import annotations

import inspect
from dataclasses import replace

import numpy as np
import pytest

import pluto.eval.linear_probe as lp
from pluto.eval.eva_protocol import EVA_TASKS
from pluto.eval.labeled import DatasetLayoutError
from pluto.eval.linear_probe import (CONSTANT_LR_EPOCHS, CONSTANT_LR_FACTOR, EVA_PROBE, GENERIC_TASK, QUICK_PROBE,
                                     cross_validated_probe, eva_rule_patience, fit_linear_probe, fold_count,
                                     pooled_out_of_fold, probe_protocol_for, quick_linear_probe, stratified_folds)

PROBE_TASKS = sorted(k for k, t in EVA_TASKS.items() if t.head == "linear")
# training-set sizes of eva's probe tasks: eva 0.4.5 docs/datasets/<name>.md, BACH from BACH._train_index_ranges
EVA_TRAIN_SIZES = {"bach": 268, "bracs": 3657, "breakhis": 1132, "crc": 100_000, "gleason_arvaniti": 15_303,
                   "mhist": 2175, "pcam": 262_144}
SHORT_EVA = replace(EVA_PROBE, steps=400, patience=10, batch_size=32)


def _blobs(n_per_class: int, n_classes: int, dim: int, seed: int, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * 3
    y = np.repeat(np.arange(n_classes), n_per_class)
    return (centres[y] + rng.normal(size=(len(y), dim)) * spread).astype(np.float32), y


@pytest.mark.parametrize("dataset", PROBE_TASKS)
def test_eva_preset_takes_each_tasks_config_constants(dataset):
    eva, p = EVA_TASKS[dataset], probe_protocol_for(dataset, "eva")
    assert (p.name, p.task, p.solver) == ("eva", dataset, "adamw")
    assert (p.steps, p.lr, p.batch_size, p.weight_decay, p.n_seeds, p.patience) == (
        eva.max_steps, eva.lr, eva.batch_size, eva.weight_decay, eva.n_runs, eva.patience)
    assert p.binary == (eva.out_features == 1 and eva.criterion == "bce" and eva.monitor == "val/BinaryBalancedAccuracy")
    assert (p.lr_factor, p.lr_factor_epochs) == (CONSTANT_LR_FACTOR, CONSTANT_LR_EPOCHS)
    quick = probe_protocol_for(dataset, "quick")
    assert (quick.solver, quick.task, quick.binary) == ("lbfgs", dataset, False)


def test_sets_without_an_eva_config_get_the_shared_constants_and_eva_patience_rule():
    shared = {(t.max_steps, t.lr, t.batch_size, t.weight_decay, t.n_runs) for t in (EVA_TASKS[k] for k in PROBE_TASKS)}
    assert len(shared) == 1  # every eva probe config has the same constants but patience and head
    for dataset in ("folder", "resolution", "qc_labels"):
        p = probe_protocol_for(dataset, "eva")
        assert p == EVA_PROBE and p.patience is None and not p.binary and p.task == "generic"
        assert (p.steps, p.lr, p.batch_size, p.weight_decay, p.n_seeds) in shared
        assert probe_protocol_for(dataset, "quick") == QUICK_PROBE
    assert EVA_TASKS[GENERIC_TASK].out_features > 1  # the borrowed config is a multiclass, cross-entropy one


@pytest.mark.parametrize("dataset", PROBE_TASKS)
def test_eva_patience_rule_reproduces_every_probe_config(dataset):
    """eva's documented rule (20% of the max epochs) gives each config's patience from its training-set size."""
    eva = EVA_TASKS[dataset]
    assert eva_rule_patience(EVA_TRAIN_SIZES[dataset], eva.batch_size, eva.max_steps) == eva.patience


def test_protocol_for_refuses_other_heads_and_presets():
    with pytest.raises(DatasetLayoutError, match="abmil task"):
        probe_protocol_for("panda", "eva")
    with pytest.raises(DatasetLayoutError, match="no linear-probe protocol"):
        probe_protocol_for("crc", "midnight")


def test_warm_up_constants_are_torchs_constantlr_defaults_that_eva_head_module_uses():
    """No eva probe config sets a scheduler, so HeadModule's default (ConstantLR with torch's defaults) is in force."""
    import torch

    pytest.importorskip("eva")
    from eva import HeadModule

    defaults = inspect.signature(torch.optim.lr_scheduler.ConstantLR).parameters
    assert (defaults["factor"].default, defaults["total_iters"].default) == (CONSTANT_LR_FACTOR, CONSTANT_LR_EPOCHS)
    assert inspect.signature(HeadModule).parameters["lr_scheduler"].default is torch.optim.lr_scheduler.ConstantLR


def test_best_validation_checkpoint_is_the_one_scored():
    """Validation labels are the training labels permuted, so validation accuracy falls as training
    proceeds: the returned weights must be the early best-validation ones, not the last."""
    x, y = _blobs(40, 3, 8, seed=0)
    val_y = (y + 1) % 3
    fit = fit_linear_probe(x, y, x, val_y, x, val_y, SHORT_EVA, seed=0, n_classes=3)
    scores = list(fit.val_history)
    assert len(scores) == fit.epochs and fit.best_val_score == max(scores)
    assert fit.best_epoch == scores.index(max(scores))  # the first epoch reaching the max
    assert fit.epochs == fit.best_epoch + 1 + SHORT_EVA.patience  # early stopping: `patience` epochs without a higher score
    assert fit.steps == fit.epochs * 4 < SHORT_EVA.steps  # 120 rows in batches of 32: 4 steps an epoch
    assert fit.test_balanced_accuracy == pytest.approx(fit.best_val_score)  # test == val data, best weights


def test_generic_patience_follows_eva_rule_from_the_training_size():
    x, y = _blobs(40, 3, 8, seed=0)
    val_y = (y + 1) % 3  # validation falls: the run stops `patience` epochs after its best
    generic = replace(EVA_PROBE, steps=600, batch_size=32)  # 4 steps an epoch, 150 epochs at most: patience 30
    assert generic.patience is None and eva_rule_patience(len(y), 32, 600) == 30
    fit = fit_linear_probe(x, y, x, val_y, x, val_y, generic, seed=0, n_classes=3)
    assert fit.epochs == fit.best_epoch + 1 + 30


def test_seeds_are_honoured_by_the_eva_protocol():
    x, y = _blobs(30, 4, 16, seed=1, spread=4.0)
    tr, va, te = np.arange(120) % 3 == 0, np.arange(120) % 3 == 1, np.arange(120) % 3 == 2
    run = lambda s: fit_linear_probe(x[tr], y[tr], x[va], y[va], x[te], y[te], SHORT_EVA, s, 4)  # noqa: E731
    a, b, c = run(7), run(7), run(8)
    assert a.test_balanced_accuracy == b.test_balanced_accuracy and np.array_equal(a.test_pred, b.test_pred)
    assert a.val_history == b.val_history
    assert a.val_history != c.val_history  # a different seed: different init and batch order


def test_binary_protocol_needs_two_classes():
    x, y = _blobs(20, 3, 4, seed=0)
    with pytest.raises(DatasetLayoutError, match="binary"):
        fit_linear_probe(x, y, x, y, x, y, replace(probe_protocol_for("mhist", "eva"), steps=10), 0, 3)


def test_quick_preset_seeds_are_bootstrap_resamples_on_a_fixed_split():
    x, y = _blobs(15, 3, 10, seed=4, spread=5.0)
    tr, te = np.arange(45) % 3 != 0, np.arange(45) % 3 == 0
    run = lambda s, p=QUICK_PROBE: fit_linear_probe(x[tr], y[tr], x[:0], y[:0], x[te], y[te], p, s, 3)  # noqa: E731
    scores = [run(s).test_balanced_accuracy for s in range(5)]
    assert len(set(scores)) > 1 and scores == [run(s).test_balanced_accuracy for s in range(5)]  # real, repeatable spread
    plain = replace(QUICK_PROBE, bootstrap=False)
    assert len({run(s, plain).test_balanced_accuracy for s in range(3)}) == 1  # the fit itself has no randomness
    assert quick_linear_probe(x[tr], y[tr], x[te], y[te]) == run(0, plain).test_balanced_accuracy


def test_pooled_cv_spread_is_the_fold_assignment_not_a_bootstrap():
    x, y = _blobs(12, 3, 10, seed=2, spread=3.0)
    assert cross_validated_probe(x, y, QUICK_PROBE, seed=0) == cross_validated_probe(x, y, replace(QUICK_PROBE, bootstrap=False), 0)
    assert len({cross_validated_probe(x, y, QUICK_PROBE, seed=s) for s in range(4)}) > 1


def test_folds_are_sklearns_stratified_k_fold():
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y = np.repeat(np.arange(3), 12)
    f0 = stratified_folds(y, 4, 0)
    for f, (_, test) in enumerate(StratifiedKFold(4, shuffle=True, random_state=0).split(y, y)):
        assert np.flatnonzero(f0 == f).tolist() == sorted(test.tolist())
    assert not np.array_equal(f0, stratified_folds(y, 4, 1)) and np.array_equal(f0, stratified_folds(y, 4, 0))
    groups = np.repeat(np.arange(12), 3)
    g = stratified_folds(y, 4, 0, groups)
    assert all(len(set(g[groups == k])) == 1 for k in range(12))  # a group never straddles folds
    for f, (_, test) in enumerate(StratifiedGroupKFold(4, shuffle=True, random_state=0).split(y, y, groups)):
        assert np.flatnonzero(g == f).tolist() == sorted(test.tolist())


def test_fold_count_adapts_to_the_smallest_class_and_refuses_singletons():
    assert fold_count([0] * 4 + [1] * 4, 5) == 4  # the bundled CRC set: 4 per class
    assert fold_count([0] * 9 + [1] * 3, 4) == 3 and fold_count([0] * 9 + [1] * 2, 4) == 2
    assert fold_count([0] * 6 + [1] * 6, 1) == 2  # never under 2
    assert fold_count([0] * 6 + [1] * 6, 5, groups=[0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4, 4]) == 2  # class 1 spans 2 groups
    with pytest.raises(DatasetLayoutError, match=r"label 2 has fewer.*0: 5, 1: 3, 2: 1"):
        fold_count([0] * 5 + [1] * 3 + [2], 4)
    with pytest.raises(DatasetLayoutError, match="at least 2 classes"):
        fold_count([1] * 6, 4)
    with pytest.raises(DatasetLayoutError, match=r"2 groups per class; label 1"):
        fold_count([0, 0, 1, 1], 4, groups=["a", "b", "c", "c"])


def test_pooled_cv_with_two_folds_trains_and_validates_on_the_other_fold():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])  # class 1 has 2 items: 2 folds
    seen = []

    def fit_fold(tr, va, te, s):
        seen.append((tr.copy(), va.copy(), te.copy()))
        assert te.any() and tr.any() and not (tr & te).any()
        return y[te]  # a perfect predictor

    assert pooled_out_of_fold(fit_fold, y, n_folds=4, seed=0) == 1.0
    assert len(seen) == 2 and all(np.array_equal(tr, va) and np.array_equal(tr, ~te) for tr, va, te in seen)
    assert np.array_equal(seen[0][2], ~seen[1][2])  # each item is predicted exactly once


def test_a_probe_that_selects_nothing_trains_on_every_fold_but_the_test_fold(monkeypatch):
    """L-BFGS keeps no best-validation checkpoint, so holding a fold out for it would only cost training data (on the
    bundled CRC set 16 instead of 24 of 32 images); eva's AdamW probe still validates on fold f+1."""
    assert not QUICK_PROBE.selects_on_validation and EVA_PROBE.selects_on_validation
    y = np.repeat(np.arange(8), 4)
    x = np.random.default_rng(0).normal(size=(32, 6)).astype(np.float32)
    seen = {}
    real_fit = lp.fit_linear_probe

    def spy(train_x, train_y, val_x, val_y, test_x, test_y, protocol, *a, **k):
        seen.setdefault(protocol.solver, []).append((len(train_y), len(val_y), len(test_y)))
        return real_fit(train_x, train_y, val_x, val_y, test_x, test_y, replace(protocol, steps=2), *a, **k)

    monkeypatch.setattr(lp, "fit_linear_probe", spy)
    cross_validated_probe(x, y, QUICK_PROBE, seed=0)
    cross_validated_probe(x, y, EVA_PROBE, seed=0)
    assert seen["lbfgs"] == [(24, 0, 8)] * 4
    assert seen["adamw"] == [(16, 8, 8)] * 4
