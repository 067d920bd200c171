"""FlexiViT patch embedding: the per-size kernels are the PI-resize (timm's = big_vision's) of one 32 x 32 base kernel."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_patch_embed

from pluto.models import FlexiPatchEmbed


def _pluto_4s_patch_embed() -> FlexiPatchEmbed:
    torch.manual_seed(0)
    return FlexiPatchEmbed(base_patch_size=16, patch_sizes=(8, 16, 32), embed_dim=384)


@pytest.mark.parametrize("patch_size", [8, 32])
def test_kernel_reproduces_timm_resample_patch_embed(patch_size):
    pe = _pluto_4s_patch_embed()
    expected = resample_patch_embed(pe.proj.weight.detach(), [patch_size, patch_size])
    got = pe.kernel(patch_size).detach()
    assert got.shape == (384, 3, patch_size, patch_size)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert torch.equal(pe.kernel(16), pe.proj.weight)  # the base size is the base kernel itself


def test_pi_resize_keeps_tokens_of_upsampled_patches():
    """FlexiViT's guarantee: a 16 px patch upsampled to 32 px gives the same token at patch 32."""
    pe = _pluto_4s_patch_embed()
    patches = torch.randn(4, 3, 16, 16)
    up = F.interpolate(patches, size=(32, 32), mode="bicubic", antialias=True, align_corners=False)
    with torch.no_grad():
        t16, grid16 = pe(patches, 16)
        t32, grid32 = pe(up, 32)
    assert grid16 == grid32 == (1, 1)
    torch.testing.assert_close(t32, t16, rtol=1e-4, atol=1e-4)


def test_gradients_reach_the_base_kernel_from_every_patch_size():
    pe = _pluto_4s_patch_embed()
    for p in (8, 16, 32):
        pe.zero_grad()
        tokens, _ = pe(torch.randn(1, 3, 64, 64), p)
        tokens.square().mean().backward()
        assert pe.proj.weight.grad is not None and pe.proj.weight.grad.abs().sum() > 0


def test_indivisible_image_is_refused_or_padded():
    s = timm.create_model("pluto_4s")
    with pytest.raises(ValueError, match="not divisible by patch size 32"):
        s.forward_features(torch.randn(1, 3, 112, 112), patch_size=32)
    with pytest.raises(ValueError, match="patch size 12 not in"):
        s.forward_features(torch.randn(1, 3, 96, 96), patch_size=12)
    tiny = timm.create_model("pluto_tiny")  # demo crops 112/48 px at patch 32: padded bottom/right
    assert tiny.grid_size(112, 112, 32) == (4, 4) and tiny.grid_size(48, 48, 32) == (2, 2)
    assert tiny.forward_features(torch.randn(1, 3, 48, 48), patch_size=32).shape == (1, 5 + 4, 96)


def _big_vision_resample(kernel: torch.Tensor, new_px: int) -> torch.Tensor:
    """big_vision's `resample_patchemb` written out in numpy: R from resized basis vectors (here the
    data pipeline's bilinear antialiased resize in place of tf.image.resize), then pinv(R^T) @ kernel."""
    old = kernel.shape[-2:]

    def resize(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x)[None, None].double()
        return F.interpolate(t, size=(new_px, new_px), mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy()

    basis = np.eye(int(np.prod(old))).reshape(-1, *old)
    resize_mat = np.stack([resize(b).reshape(-1) for b in basis]).T
    resize_mat_pinv = np.linalg.pinv(resize_mat.T)
    flat = kernel.detach().double().numpy().reshape(-1, int(np.prod(old)))
    return torch.from_numpy((resize_mat_pinv @ flat.T).T.reshape(*kernel.shape[:2], new_px, new_px))


@pytest.mark.parametrize("arch", ["pluto_4s", "pluto_tiny"])
def test_flexi_variants_pi_resize_a_32px_kernel_as_big_vision(arch):
    """FlexiViT (Beyer et al. 2023): a 32 x 32 underlying kernel, PI-resized to every smaller patch size."""
    torch.manual_seed(0)
    pe = timm.create_model(arch).patch_embed
    assert pe.proj.weight.shape[-2:] == (32, 32)
    assert torch.equal(pe.kernel(32), pe.proj.weight)
    for p in [p for p in pe.patch_sizes if p != 32]:
        torch.testing.assert_close(pe.kernel(p).detach().double(), _big_vision_resample(pe.proj.weight, p), rtol=1e-4, atol=1e-5)


def test_a_32px_base_makes_the_patch_32_kernel_full_rank():
    """With a 16 px base the p=32 kernels span only 256 of their 1024 dimensions (the issue's rank limit)."""
    torch.manual_seed(0)
    kernels = {}
    for base in (16, 32):
        pe = FlexiPatchEmbed(base_patch_size=base, patch_sizes=(16, 32), in_chans=1, embed_dim=1200, interpolation="bilinear")
        kernels[base] = pe.kernel(32).detach().reshape(1200, -1).double()
    assert torch.linalg.matrix_rank(kernels[16], rtol=1e-4) == 256  # float32 kernels: rank up to their rounding
    assert torch.linalg.matrix_rank(kernels[32], rtol=1e-4) == 1024
