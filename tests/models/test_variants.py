"""Every registered PLUTO model against its pretrained_cfg: token shapes, sizes, timm conventions."""

from __future__ import annotations

import pytest
import timm
import torch

from pluto.models import PLUTO_ARCHS

EXPECTED = {  # (width, depth, heads, patch_sizes) from the PLUTO-4 paper §3.1 / the issue
    "pluto_tiny": (96, 4, 3, (16, 32)),
    "pluto_4s": (384, 12, 6, (8, 16, 32)),
    "pluto_4g": (1536, 40, 24, (14,)),
}


def test_registered_with_timm():
    assert set(timm.list_models("pluto_*")) == set(PLUTO_ARCHS)


@pytest.mark.parametrize("arch", ["pluto_tiny", "pluto_4s"])
def test_token_shapes_at_every_patch_size_of_the_cfg(arch):
    model = timm.create_model(arch).eval()
    cfg = model.pretrained_cfg
    width, depth, heads, patch_sizes = EXPECTED[arch]
    assert (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads) == (width, depth, heads)
    assert model.patch_sizes == patch_sizes and cfg["notes"] == (f"patch_sizes={','.join(map(str, patch_sizes))}",)
    assert (cfg["num_classes"], cfg["license"]) == (0, "apache-2.0")
    assert (model.num_reg_tokens, model.num_prefix_tokens) == (4, 5)
    c, h, w = cfg["input_size"]
    x = torch.randn(1, c, h, w)
    with torch.no_grad():
        for p in patch_sizes:
            rows, cols = model.grid_size(h, w, p)
            tokens = model.forward_features(x, patch_size=p)
            assert tokens.shape == (1, 1 + 4 + rows * cols, width)
            assert model.forward_head(tokens, pre_logits=True).shape == (1, width)
        assert model(x).shape == (1, width)  # num_classes=0: forward is the CLS embedding


def test_4s_params_are_vit_s_size():
    n = sum(p.numel() for p in timm.create_model("pluto_4s").parameters())
    assert 21.5e6 < n < 22.5e6  # paper: ViT-S (22M)


def test_4g_is_vit_g_on_the_meta_device():
    with torch.device("meta"):
        model = timm.create_model("pluto_4g")
        tokens = model.forward_features(torch.empty(2, 3, 224, 224))
    n = sum(p.numel() for p in model.parameters())
    assert 1.13e9 < n < 1.14e9  # paper: ViT-G (1.1B); DINOv2 ViT-g/14 minus its absolute pos_embed
    assert tokens.shape == (2, 1 + 4 + 16 * 16, 1536)
    assert model.blocks[0].mlp.fc1.weight.shape == (2 * 4096, 1536)  # SwiGLU, hidden 4096 as DINOv2
    assert model.pretrained_cfg["input_size"] == (3, 224, 224) and model.patch_sizes == (14,)


def test_4g_class_runs_forward_backward_with_checkpointing_at_reduced_width():
    torch.manual_seed(0)
    model = timm.create_model("pluto_4g", embed_dim=64, depth=2, num_heads=2, init_values=1.0)
    x = torch.randn(2, 3, 56, 56)
    plain = model.forward_features(x)
    plain.square().mean().backward()
    params = [p for name, p in model.named_parameters() if name != "mask_token"]  # no masks given
    grads = [p.grad.clone() for p in params]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    ckpt = model.forward_features(x)
    ckpt.square().mean().backward()
    assert plain.shape == (2, 1 + 4 + 4 * 4, 64)
    torch.testing.assert_close(ckpt, plain)
    for g, p in zip(grads, params):
        torch.testing.assert_close(p.grad, g)


def test_reset_classifier_and_head():
    model = timm.create_model("pluto_tiny", num_classes=5)
    x = torch.randn(1, 3, 112, 112)
    assert model(x).shape == (1, 5)
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), torch.nn.Identity) and model(x).shape == (1, 96)


def test_masks_replace_patch_tokens_with_the_mask_token(tiny, images):
    n = tiny.grid_size(112, 112)[0] * tiny.grid_size(112, 112)[1]
    none = torch.zeros(2, n, dtype=torch.bool)
    some = none.clone()
    some[0, :5] = True
    with torch.no_grad():
        tiny.mask_token.normal_()
        base = tiny.forward_features(images)
        assert torch.equal(tiny.forward_features(images, masks=none), base)
        masked = tiny.forward_features(images, masks=some)
    assert not torch.allclose(masked[0], base[0])
    assert torch.equal(masked[1], base[1])  # the other image is untouched
    out = tiny.forward_features(images, masks=some)
    out[0].sum().backward()
    assert tiny.mask_token.grad.abs().sum() > 0  # the mask token is learned


def test_training_after_inference_mode_evaluation(tiny, images):
    with torch.inference_mode():
        tiny.forward_features(images)
    tiny.train()
    tiny.forward_features(images).square().mean().backward()
    assert tiny.cls_token.grad is not None


def test_stochastic_depth_linear_by_default_uniform_as_dinov2_configs():
    """timm/dinov2 linear rule (0 at block 0, the rate at the last), or dinov2's `drop_path_uniform: true`."""
    linear = timm.create_model("pluto_tiny", drop_path_rate=0.3)
    uniform = timm.create_model("pluto_tiny", drop_path_rate=0.3, drop_path_uniform=True)
    rates = lambda m: [float(getattr(b.drop_path1, "drop_prob", 0.0)) for b in m.blocks]  # noqa: E731
    assert rates(linear) == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert rates(uniform) == pytest.approx([0.3] * 4)
    assert rates(timm.create_model("pluto_tiny")) == [0.0] * 4
