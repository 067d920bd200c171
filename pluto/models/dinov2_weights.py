"""Load DINOv2-style weights (Meta's repo or timm's port) into a `PlutoViT`.

Accepts a full DINOv2 training checkpoint's teacher (`teacher.backbone.*`), a bare backbone, timm's
`vit_*_dinov2` layout, or our own keys. What does not carry over is said in the log:
- `pos_embed` is dropped: PLUTO-4 uses 2D-RoPE, not absolute position embeddings (paper §3.1);
- the key bias of the fused qkv is dropped: q·(k + b) = q·k + q·b adds the same value to every
  logit of a query, which softmax ignores, so the attention output is unchanged;
- the patch kernel is PI-resized (FlexiViT, with the model's own resize) when its size differs from
  the model's base kernel (32 x 32 for the FlexiViT variants);
- DINO/iBOT heads are not backbone weights and are skipped.
"""

from __future__ import annotations

import logging
import re

import torch
from timm.layers import resample_patch_embed
from torch import nn

logger = logging.getLogger(__name__)

_PREFIXES = ("teacher.", "module.", "backbone.", "model.")
_RENAMES = (
    (r"^register_tokens$", "reg_token"),
    (r"^blocks\.\d+\.(\d+)\.", r"blocks.\1."),  # DINOv2 block chunks keep the global block index
    (r"\.ls1\.gamma$", ".gamma_1"),
    (r"\.ls2\.gamma$", ".gamma_2"),
    (r"\.mlp\.w12\.", ".mlp.fc1."),
    (r"\.mlp\.w3\.", ".mlp.fc2."),
)
_SKIP = re.compile(r"^(pos_embed|dino_head|ibot_head|head|fc_norm)")


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


def _fit_base_kernel(kernel: torch.Tensor, patch_embed: nn.Module) -> torch.Tensor:
    """A saved (D, C, s, s) patch kernel as `patch_embed`'s (D, C, b, b) base kernel.

    When s is one of the model's patch sizes (a model saved before the 32 x 32 FlexiViT kernel, warm
    started today), the base kernel is the minimum-norm one whose PI-resize back to s is the saved
    kernel exactly: the parent's function at p = s carries over unchanged, and at p = b the kernel
    sees a base-size patch resized to s, FlexiViT's own semantics. (A PI-resize up to b would not
    map back to the saved kernel.) Any other size (dinov2's 14) is PI-resized to b."""
    base, size = patch_embed.base_patch_size, kernel.shape[-1]
    if tuple(kernel.shape[-2:]) == (base, base):
        return kernel
    if size < base and size in patch_embed.patch_sizes and kernel.shape[-2] == size:
        logger.info("fitting the %dx%d base kernel to the saved %dx%d one (exact at p=%d)", base, base, size, size, size)
        n = base * base
        basis = torch.eye(n, dtype=torch.float64).reshape(n, 1, base, base)
        with torch.no_grad():  # the resampler is linear: its matrix, column by column
            resize = patch_embed.resampler(basis, [size, size]).reshape(n, size * size).T  # (s*s, b*b)
        flat = kernel.detach().to(torch.float64).reshape(-1, size * size)
        return (flat @ torch.linalg.pinv(resize).T).reshape(*kernel.shape[:2], base, base).to(kernel.dtype)
    logger.info("resampling patch kernel %s -> %dx%d (FlexiViT PI-resize)", tuple(kernel.shape[-2:]), base, base)
    return resample_patch_embed(kernel, [base, base], interpolation=patch_embed.resampler.interpolation)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """DINOv2-layout `state_dict` -> keys and shapes of `model` (a PlutoViT)."""
    if "teacher" in state_dict and isinstance(state_dict["teacher"], dict):
        state_dict = state_dict["teacher"]
    out: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for key, value in state_dict.items():
        if key.startswith("student."):
            continue
        k = _strip_prefixes(key)
        if _SKIP.match(k):
            skipped.append(k)
            continue
        for pattern, repl in _RENAMES:
            k = re.sub(pattern, repl, k)
        if k.endswith("attn.qkv.bias"):
            q_bias, _, v_bias = value.chunk(3)
            out[k.replace("qkv.bias", "q_bias")] = q_bias
            out[k.replace("qkv.bias", "v_bias")] = v_bias
            continue
        if k == "patch_embed.proj.weight":
            value = _fit_base_kernel(value, model.patch_embed)
        if k == "mask_token":
            value = value.reshape(1, -1)
        out[k] = value
    if skipped:
        logger.info("not loaded (no counterpart in a RoPE backbone): %s", ", ".join(sorted(set(skipped))))
    return out
