"""The registered PLUTO variants (`timm.create_model("pluto_4s")` etc.) and their pretrained_cfgs.

Sizes (PLUTO-4 paper §3.1; sizes as listed in its Table 4): PLUTO-4S is ViT-S (22M; width 384, 12 blocks, 6 heads) with
FlexiViT patch sizes [8, 16, 32] served by one 32 x 32 underlying kernel (FlexiViT's, Beyer et al.
2023 §3.4; PI-resized with the data pipeline's bilinear antialiased resize); PLUTO-4G is ViT-G/14 as
in DINOv2 (1.1B; width 1536, 40 blocks, 24 heads, SwiGLU FFN) with a single patch size 14 and 4
registers. `pluto_tiny` is the PLUTO-4S architecture sized for a 2-core CPU demo (width 96, 4
blocks, patch sizes 16/32 from a 32 x 32 kernel, 112 px crops). `ARCH_PATCH_SIZES` lets the
preflight check a run's patch sizes before any model is built.

Normalisation: the paper does not state its pixel mean/std; DINOv2, which PLUTO-4's recipe derives
from, uses the ImageNet statistics, so these configs do too. No trained weights are published for
these names; the licence field is the project's (Apache-2.0), which covers weights you train.
"""

from __future__ import annotations

from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from pluto.models.dinov2_weights import checkpoint_filter_fn
from pluto.models.vision_transformer import PlutoViT

PLUTO_ARCHS = ("pluto_tiny", "pluto_4s", "pluto_4g")
ARCH_PATCH_SIZES = {"pluto_tiny": (16, 32), "pluto_4s": (8, 16, 32), "pluto_4g": (14,)}
FLEXI = dict(base_patch_size=32, flexi_interpolation="bilinear")  # FlexiViT's 32 x 32 underlying kernel


def _cfg(img_px: int, patch_sizes: tuple[int, ...], **kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 0,
        "input_size": (3, img_px, img_px),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2511.02826",
        "paper_name": "PLUTO-4: Frontier Pathology Foundation Models",
        "notes": (f"patch_sizes={','.join(str(p) for p in patch_sizes)}",),
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "pluto_tiny": _cfg(112, ARCH_PATCH_SIZES["pluto_tiny"], description="CPU demo size of the PLUTO-4S architecture"),
        "pluto_4s": _cfg(224, ARCH_PATCH_SIZES["pluto_4s"]),
        "pluto_4g": _cfg(224, ARCH_PATCH_SIZES["pluto_4g"]),
    }
)


def _create(variant: str, pretrained: bool, model_args: dict[str, Any], **kwargs: Any) -> PlutoViT:
    return build_model_with_cfg(
        PlutoViT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        **dict(model_args, **kwargs),
    )


@register_model
def pluto_tiny(pretrained: bool = False, **kwargs: Any) -> PlutoViT:
    """PLUTO-4S architecture at CPU-demo size: 96 wide, 4 blocks, 3 heads, patch 16 (or 32)."""
    model_args = dict(
        img_size=112, patch_size=16, patch_sizes=ARCH_PATCH_SIZES["pluto_tiny"], embed_dim=96, depth=4, num_heads=3,
        num_reg_tokens=4, dynamic_img_pad=True, **FLEXI,
    )
    return _create("pluto_tiny", pretrained, model_args, **kwargs)


@register_model
def pluto_4s(pretrained: bool = False, **kwargs: Any) -> PlutoViT:
    """PLUTO-4S: ViT-S, FlexiViT patch sizes 8/16/32 (default 16) from a 32 x 32 kernel, 2D-RoPE, 4 registers."""
    model_args = dict(
        img_size=224, patch_size=16, patch_sizes=ARCH_PATCH_SIZES["pluto_4s"], embed_dim=384, depth=12, num_heads=6,
        num_reg_tokens=4, **FLEXI,
    )
    return _create("pluto_4s", pretrained, model_args, **kwargs)


@register_model
def pluto_4g(pretrained: bool = False, **kwargs: Any) -> PlutoViT:
    """PLUTO-4G: ViT-G/14 as DINOv2's ViT-g (SwiGLU hidden 4096 = int(1536 * 8/3)), 4 registers."""
    model_args = dict(
        img_size=224, patch_size=14, patch_sizes=ARCH_PATCH_SIZES["pluto_4g"], embed_dim=1536, depth=40, num_heads=24,
        mlp_ratio=2.66667, swiglu_mlp=True, num_reg_tokens=4,
    )
    return _create("pluto_4g", pretrained, model_args, **kwargs)
