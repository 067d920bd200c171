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
            base = model.patch_embed.base_patch_size
            if tuple(value.shape[-2:]) != (base, base):
                logger.info("resampling patch kernel %s -> %dx%d (FlexiViT PI-resize)", tuple(value.shape[-2:]), base, base)
                value = resample_patch_embed(value, [base, base], interpolation=model.patch_embed.resampler.interpolation)
        if k == "mask_token":
            value = value.reshape(1, -1)
        out[k] = value
    if skipped:
        logger.info("not loaded (no counterpart in a RoPE backbone): %s", ", ".join(sorted(set(skipped))))
    return out
