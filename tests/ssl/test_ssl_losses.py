"""DINO, iBOT, KoLeo and KDE losses against values computed by hand on small inputs."""

from __future__ import annotations

import math

import pytest
import torch

from pluto.ssl import DINOLoss, IBOTPatchLoss, kde_loss, koleo_loss


def _log_softmax(v: list[float], temp: float) -> list[float]:
    z = [x / temp for x in v]
    lse = math.log(sum(math.exp(x) for x in z))
    return [x - lse for x in z]


def _ce(p: list[float], s: list[float], temp: float) -> float:
    return -sum(pi * li for pi, li in zip(p, _log_softmax(s, temp)))


def test_dino_loss_matches_hand_computation_and_skips_same_view_pairs():
    s_global = [[[1.0, 0.0, -1.0]], [[0.2, 0.5, 0.1]]]  # (n_global=2, B=1, K=3)
    s_local = [[[0.0, 2.0, 0.0]]]  # (n_local=1, B=1, K=3)
    t = [[[0.7, 0.2, 0.1]], [[0.1, 0.3, 0.6]]]
    temp = 0.1
    pairs = [
        _ce(t[1][0], s_global[0][0], temp),  # global 0 vs teacher 1
        _ce(t[0][0], s_global[1][0], temp),  # global 1 vs teacher 0
        _ce(t[0][0], s_local[0][0], temp),
        _ce(t[1][0], s_local[0][0], temp),
    ]
    expected = sum(pairs) / 4
    got = DINOLoss(temp)(torch.tensor(s_global), torch.tensor(s_local), torch.tensor(t))
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # without local crops only the two cross-view global pairs count
    got_global = DINOLoss(temp)(torch.tensor(s_global), None, torch.tensor(t))
    assert got_global.item() == pytest.approx((pairs[0] + pairs[1]) / 2, rel=1e-5)


def test_dino_loss_averages_over_images():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 7), torch.softmax(torch.randn(2, 5, 7), -1)
    full = DINOLoss()(s, None, t)
    per_image = [DINOLoss()(s[:, i : i + 1], None, t[:, i : i + 1]) for i in range(5)]
    assert full.item() == pytest.approx(torch.stack(per_image).mean().item(), rel=1e-5)


def test_ibot_loss_counts_only_masked_tokens_weighted_per_image():
    torch.manual_seed(0)
    b, n, k, temp = 3, 4, 5, 0.1
    student, teacher = torch.randn(b, n, k), torch.softmax(torch.randn(b, n, k), -1)
    masks = torch.tensor([[True, False, False, True], [False, False, False, False], [False, True, False, False]])
    got = IBOTPatchLoss(temp)(student[masks], teacher[masks], masks)
    img0 = (_ce(teacher[0, 0].tolist(), student[0, 0].tolist(), temp) + _ce(teacher[0, 3].tolist(), student[0, 3].tolist(), temp)) / 2
    img2 = _ce(teacher[2, 1].tolist(), student[2, 1].tolist(), temp)
    assert got.item() == pytest.approx((img0 + img2) / b, rel=1e-5)  # DINOv2 divides by all images
    # values at unmasked positions cannot matter: they are never selected
    student2 = student.clone()
    student2[~masks] = 100.0
    assert IBOTPatchLoss(temp)(student2[masks], teacher[masks], masks).item() == pytest.approx(got.item(), rel=1e-6)


POINTS = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]  # unit vectors; squared distances 2, 0.8, 0.4


def test_koleo_matches_nearest_neighbour_distances():
    # nearest neighbours: p0 -> p2 (sqrt 0.8), p1 -> p2 (sqrt 0.4), p2 -> p1 (sqrt 0.4)
    expected = -(math.log(math.sqrt(0.8)) + 2 * math.log(math.sqrt(0.4))) / 3
    x = torch.tensor(POINTS) * torch.tensor([[3.0], [0.5], [2.0]])  # scale must not matter (normalised)
    assert koleo_loss(x).item() == pytest.approx(expected, abs=1e-5)
    assert koleo_loss(x[:1]).item() == 0.0  # no neighbour: zero, not NaN


def test_kde_matches_uniformity_formula():
    t = 2.0
    sq = [2.0, 0.8, 0.4]
    expected = math.log(sum(2 * math.exp(-t * d) for d in sq) / 6)
    assert kde_loss(torch.tensor(POINTS), t).item() == pytest.approx(expected, rel=1e-5)


def test_regularisers_prefer_spread_embeddings():
    torch.manual_seed(0)
    spread = torch.randn(32, 16)
    clumped = torch.randn(1, 16) + 0.05 * torch.randn(32, 16)
    assert koleo_loss(spread) < koleo_loss(clumped)
    assert kde_loss(spread) < kde_loss(clumped)


def test_kde_equals_wang_and_isolas_uniformity_code():
    """Midnight's KDE regulariser cites Wang & Isola 2020: their published one-liner over all pairs i < j."""
    torch.manual_seed(0)
    x = torch.randn(24, 16)
    xn = torch.nn.functional.normalize(x, dim=-1)
    for t in (2.0, 2.5):
        reference = torch.pdist(xn, p=2).pow(2).mul(-t).exp().mean().log()
        assert kde_loss(x, t).item() == pytest.approx(reference.item(), rel=1e-5)
