"""2D-RoPE (DINOv3 formulation): attention logits depend on relative patch position only.

The first block's q and k are captured at the real SDPA call (after RoPE). An image whose content
is moved by whole patches must give the same logits between the same content tokens, while the
rotated queries themselves change (so the test is not passing because RoPE does nothing).
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F


def _first_block_qk(model, x, patch_size, monkeypatch):
    captured = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        captured.append((q.detach().clone(), k.detach().clone()))
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        model.forward_features(x, patch_size=patch_size)
    monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
    assert len(captured) == len(model.blocks)
    return captured[0]


@pytest.mark.parametrize(("patch_size", "shift"), [(16, (1, 2)), (8, (3, 1))])
def test_shift_by_whole_patches_keeps_logits_between_same_tokens(monkeypatch, patch_size, shift):
    torch.manual_seed(0)
    model = timm.create_model("pluto_4s").eval()
    grid, content = 8, 4  # 8 x 8 token grid, a 4 x 4-patch content block on a constant background
    px = grid * patch_size
    block = torch.randn(1, 3, content * patch_size, content * patch_size)
    a, b = torch.zeros(1, 3, px, px), torch.zeros(1, 3, px, px)
    dy, dx = shift
    a[..., : content * patch_size, : content * patch_size] = block
    b[..., dy * patch_size : (dy + content) * patch_size, dx * patch_size : (dx + content) * patch_size] = block

    qa, ka = _first_block_qk(model, a, patch_size, monkeypatch)
    qb, kb = _first_block_qk(model, b, patch_size, monkeypatch)
    npt = model.num_prefix_tokens
    rows, cols = torch.meshgrid(torch.arange(content), torch.arange(content), indexing="ij")
    idx_a = npt + (rows * grid + cols).flatten()
    idx_b = npt + ((rows + dy) * grid + (cols + dx)).flatten()

    logits_a = qa[..., idx_a, :] @ ka[..., idx_a, :].transpose(-1, -2)
    logits_b = qb[..., idx_b, :] @ kb[..., idx_b, :].transpose(-1, -2)
    torch.testing.assert_close(logits_b, logits_a, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(qa[..., idx_a, :], qb[..., idx_b, :], atol=1e-3)  # absolute rotation differs
    # CLS and registers carry no position: identical rows in both images
    torch.testing.assert_close(qa[..., :npt, :], qb[..., :npt, :])


def test_rope_coordinate_augmentation_is_train_only():
    torch.manual_seed(0)
    model = timm.create_model("pluto_tiny", rope_rescale_coords=2.0, init_values=1.0)  # LayerScale 1: visible effect
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), model.forward_features(x))
        model.train()
        torch.manual_seed(1)
        first = model.forward_features(x)
        torch.manual_seed(2)
        assert not torch.allclose(first, model.forward_features(x))
