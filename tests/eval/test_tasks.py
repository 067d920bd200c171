"""Task heads on generated data: HEST ridge, ABMIL, segmentation decoder, kNN (linear probe: test_probe_protocol.py).

ABMIL and segmentation protocol details (eva's loop, BCE, padding, ignore_index): test_mil_seg_protocol.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pluto.eval.abmil import fit_abmil, mil_protocol
from pluto.eval.hest import fit_pca_ridge, hest_fold_pearson, patient_folds
from pluto.eval.linear_probe import knn_accuracy
from pluto.eval.segmentation import build_decoder, decode, fit_segmentation, seg_protocol


def _blobs(n_per_class: int, n_classes: int, dim: int, seed: int, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * 3
    y = np.repeat(np.arange(n_classes), n_per_class)
    return (centres[y] + rng.normal(size=(len(y), dim)) * spread).astype(np.float32), y


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
