"""Task heads on generated data: best-validation selection, seeding, HEST ridge, ABMIL, segmentation decoder, kNN.

ABMIL and segmentation protocol details (eva's loop, BCE, padding, ignore_index): test_mil_seg_protocol.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pluto.eval.abmil import fit_abmil, mil_protocol
from pluto.eval.hest import fit_pca_ridge, hest_fold_pearson, patient_folds
from pluto.eval.linear_probe import EVA_PROBE, QUICK_PROBE, cross_validated_probe, fit_linear_probe, knn_accuracy, stratified_folds
from pluto.eval.segmentation import build_decoder, decode, fit_segmentation, seg_protocol

SHORT_EVA = dataclasses.replace(EVA_PROBE, steps=100, eval_every=10, batch_size=32)


def _blobs(n_per_class: int, n_classes: int, dim: int, seed: int, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * 3
    y = np.repeat(np.arange(n_classes), n_per_class)
    return (centres[y] + rng.normal(size=(len(y), dim)) * spread).astype(np.float32), y


def test_best_validation_checkpoint_is_the_one_scored():
    """Validation labels are the training labels permuted, so validation accuracy falls as training
    proceeds: the returned weights must be the early best-validation ones, not the last."""
    x, y = _blobs(40, 3, 8, seed=0)
    val_y = (y + 1) % 3
    fit = fit_linear_probe(x, y, x, val_y, x, val_y, SHORT_EVA, seed=0, n_classes=3)
    steps, scores = zip(*fit.val_history)
    assert fit.best_val_balanced_accuracy == max(scores)
    assert fit.best_step == steps[scores.index(max(scores))]  # first step reaching the max
    assert fit.best_step < SHORT_EVA.steps and scores[-1] < max(scores)
    assert fit.test_balanced_accuracy == pytest.approx(fit.best_val_balanced_accuracy)  # test == val data, best weights


def test_seeds_are_honoured_by_the_eva_protocol():
    x, y = _blobs(30, 4, 16, seed=1, spread=4.0)
    tr, va, te = np.arange(120) % 3 == 0, np.arange(120) % 3 == 1, np.arange(120) % 3 == 2
    run = lambda s: fit_linear_probe(x[tr], y[tr], x[va], y[va], x[te], y[te], SHORT_EVA, s, 4)  # noqa: E731
    a, b, c = run(7), run(7), run(8)
    assert a.test_balanced_accuracy == b.test_balanced_accuracy and np.array_equal(a.test_pred, b.test_pred)
    assert a.val_history == b.val_history
    assert a.val_history != c.val_history  # a different seed: different init and batch order


def test_quick_probe_separates_blobs_and_cv_folds_follow_the_seed():
    x, y = _blobs(12, 3, 10, seed=2)
    assert cross_validated_probe(x, y, QUICK_PROBE, seed=0) > 0.9
    f0, f1 = stratified_folds(y, 4, 0), stratified_folds(y, 4, 1)
    assert not np.array_equal(f0, f1) and np.array_equal(f0, stratified_folds(y, 4, 0))
    for f in range(4):  # stratified: 3 of each class per fold
        assert np.bincount(y[f0 == f], minlength=3).tolist() == [3, 3, 3]
    groups = np.repeat(np.arange(12), 3)
    g = stratified_folds(y, 4, 0, groups)
    assert all(len(set(g[groups == k])) == 1 for k in range(12))  # a group never straddles folds


def test_knn_accuracy_on_blobs():
    x, y = _blobs(20, 3, 8, seed=3)
    assert knn_accuracy(x[::2], y[::2], x[1::2], y[1::2], k=5) > 0.9


def test_hest_ridge_recovers_a_linear_relation():
    rng = np.random.default_rng(0)
    n, d, g, k = 400, 300, 50, 20  # embeddings: 300-d views of a 20-d latent tissue state
    z = rng.normal(size=(n, k))
    x = z @ rng.normal(size=(k, d)) + 0.1 * rng.normal(size=(n, d))
    log_expr = 4.0 + z @ rng.normal(size=(k, g)) * 0.3 + 0.1 * rng.normal(size=(n, g))
    counts = np.expm1(log_expr)  # HEST targets are log1p(counts)
    patients = np.repeat(np.arange(4), n // 4)
    scores = [hest_fold_pearson(x[tr], counts[tr], x[te], counts[te], n_components=256) for tr, te in patient_folds(patients)]
    assert min(scores) > 0.9
    for tr, te in patient_folds(patients):
        assert set(patients[tr]).isdisjoint(patients[te])


def test_hest_ridge_matches_sklearn_pipeline():
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(120, 40)), rng.normal(size=(120, 5))
    ours = fit_pca_ridge(x, y, n_components=20, alpha=3.0).predict(x[:10])
    ref = make_pipeline(StandardScaler(), PCA(20, svd_solver="full"), Ridge(alpha=3.0)).fit(x, y).predict(x[:10])
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-8)


def test_abmil_learns_a_mil_task_and_is_seeded():
    from test_mil_seg_protocol import _bags

    tb, ty = _bags(60, 0)
    vb, vy = _bags(20, 1)
    sb, sy = _bags(30, 2)
    short = dataclasses.replace(mil_protocol("quick", "magnification_bags"), max_epochs=12)
    a = fit_abmil(tb, ty, vb, vy, sb, sy, short, seed=0, n_classes=2)
    assert a.test_balanced_accuracy > 0.8 and 0 <= a.best_epoch < a.epochs <= short.max_epochs
    b = fit_abmil(tb, ty, vb, vy, sb, sy, short, seed=0, n_classes=2)
    assert b.test_balanced_accuracy == a.test_balanced_accuracy and np.array_equal(a.test_pred, b.test_pred)


def test_segmentation_decoder_shapes_and_learns_from_the_tokens():
    """eva's ConvDecoderMS sees the token grid only: masks drawn from the tokens' cells are learnt."""
    from test_mil_seg_protocol import _token_grids

    tokens, masks = _token_grids(24, 0)
    dec = build_decoder(8, 3)
    assert decode(dec, tokens[:2], (16, 16)).shape == (2, 3, 16, 16)
    protocol = dataclasses.replace(seg_protocol("quick", "consep"), n_classes=3)
    fit = fit_segmentation(tokens[:16], masks[:16], tokens[16:], masks[16:], tokens[16:], masks[16:], protocol, seed=0)
    assert fit.test_dice > 0.8 and fit.steps == protocol.max_steps


def test_quick_linear_probe_for_training_monitors():
    from pluto.eval.linear_probe import quick_linear_probe

    x, y = _blobs(20, 3, 8, seed=4)
    assert quick_linear_probe(x[::2], y[::2], x[1::2], y[1::2]) > 0.9
