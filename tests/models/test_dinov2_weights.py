"""checkpoint_filter_fn: DINOv2 weights (Meta's training layout and timm's port) load into PLUTO models.

Block equality against timm's own DINOv2 ViT shows the mapping is exact, including dropping the
qkv key bias (softmax-invariant) and SwiGLU's w12/w3 packing for ViT-g.
"""

from __future__ import annotations

import re

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_patch_embed

from pluto.models import checkpoint_filter_fn


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    return model.eval()


def _meta_layout(timm_sd: dict[str, torch.Tensor], dim: int) -> dict[str, torch.Tensor]:
    """timm's DINOv2 keys -> facebookresearch/dinov2 teacher checkpoint keys (chunked blocks, w12/w3)."""
    out = {"teacher.dino_head.mlp.0.weight": torch.zeros(4, dim), "student.backbone.cls_token": torch.zeros(1, 1, dim)}
    for k, v in timm_sd.items():
        k = k.replace("reg_token", "register_tokens").replace("mlp.fc1.", "mlp.w12.").replace("mlp.fc2.", "mlp.w3.")
        k = re.sub(r"^blocks\.(\d+)\.", r"blocks.0.\1.", k)
        out["teacher.backbone." + k] = v
    out["teacher.backbone.mask_token"] = torch.randn(1, dim)
    return out


@pytest.mark.parametrize(
    ("timm_arch", "pluto_arch", "size"),
    [
        ("vit_small_patch14_reg4_dinov2", "pluto_4s", dict(embed_dim=96, depth=2, num_heads=2)),
        ("vit_giant_patch14_reg4_dinov2", "pluto_4g", dict(embed_dim=96, depth=2, num_heads=2)),
    ],
)
def test_meta_layout_teacher_loads_and_blocks_match_timm_dinov2(timm_arch, pluto_arch, size, tmp_path):
    ref = _randomised(timm.create_model(timm_arch, img_size=56, num_classes=0, **size))
    file = tmp_path / "teacher.safetensors"
    save_file(_meta_layout(ref.state_dict(), size["embed_dim"]), str(file))
    model = timm.create_model(
        pluto_arch, pretrained=True, pretrained_cfg_overlay=dict(file=str(file)),
        patch_size=14, patch_sizes=(14,), base_patch_size=14, **size,
    ).eval()  # strict load: every PLUTO key is filled
    x = torch.randn(2, 16 + 5, size["embed_dim"])
    with torch.no_grad():
        for ours, theirs in zip(model.blocks, ref.blocks):
            torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
        img = torch.randn(1, 3, 56, 56)
        torch.testing.assert_close(model.patch_embed(img, 14)[0], ref.patch_embed(img))
    assert torch.equal(model.reg_token, ref.reg_token)


def test_patch_kernel_is_pi_resized_to_the_base_size():
    ref = _randomised(timm.create_model("vit_small_patch14_reg4_dinov2", img_size=56, depth=1))
    model = timm.create_model("pluto_4s", depth=1)
    sd = checkpoint_filter_fn(ref.state_dict(), model)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert missing == ["mask_token"] and unexpected == []  # timm's port carries no mask token
    assert "pos_embed" not in sd and "attn.qkv.bias" not in " ".join(sd)
    expected = resample_patch_embed(ref.patch_embed.proj.weight.detach(), [32, 32], interpolation="bilinear")
    torch.testing.assert_close(model.patch_embed.proj.weight.detach(), expected)  # 14 -> the 32 x 32 base kernel
