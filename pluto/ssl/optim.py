"""Optimizer parameter groups with layer-wise lr decay, schedule application, last-layer freeze.

Layer ids as DINOv2 `get_vit_lr_decay_rate`: tokens and patch embedding 0, block i -> i + 1,
everything after the blocks (final norm, heads) L + 1; lr multiplier layer_decay ** (L + 1 - id)
(DINOv2 0.9), times `patch_embed_lr_mult` (0.2) for the patch embedding. No weight decay on
biases, norms, LayerScale gammas and tokens (every 1-D parameter and the cls/register/mask/pos
tokens). Each group carries `lr_mult`, `wd_mult` and `is_last_layer` so `apply_schedules` can set
the per-iteration values.
"""

from __future__ import annotations

import re

from torch import nn

from pluto.ssl.schedules import Schedules

_TOKEN_NAMES = ("cls_token", "reg_token", "register_tokens", "mask_token", "pos_embed")
_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def _n_blocks(model: nn.Module) -> int:
    ids = [int(m.group(1)) for name, _ in model.named_parameters() if (m := _BLOCK.search(name))]
    return max(ids) + 1 if ids else 0


def _layer_id(name: str, n_blocks: int) -> int:
    if "patch_embed" in name or any(tok in name for tok in _TOKEN_NAMES):
        return 0
    m = _BLOCK.search(name)
    return int(m.group(1)) + 1 if m else n_blocks + 1


def param_groups(
    model: nn.Module, lr: float, wd: float, layer_decay: float = 0.9, patch_embed_lr_mult: float = 0.2
) -> list[dict]:
    """Trainable parameters of `model` (a backbone or the student ModuleDict) grouped by (lr_mult, wd_mult, last layer)."""
    n_blocks = _n_blocks(model)
    groups: dict[tuple[float, float, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr_mult = layer_decay ** (n_blocks + 1 - _layer_id(name, n_blocks))
        if "patch_embed" in name:
            lr_mult *= patch_embed_lr_mult
        no_wd = param.ndim <= 1 or name.endswith(".bias") or any(tok in name for tok in _TOKEN_NAMES)
        wd_mult = 0.0 if no_wd else 1.0
        is_last = "last_layer" in name
        key = (lr_mult, wd_mult, is_last)
        if key not in groups:
            groups[key] = {
                "params": [], "param_names": [], "lr_mult": lr_mult, "wd_mult": wd_mult, "is_last_layer": is_last,
                "lr": lr * lr_mult, "weight_decay": wd * wd_mult,
            }
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return list(groups.values())


def apply_schedules(optimizer, it: int, schedules: Schedules) -> None:
    """Set every group's lr and weight decay for iteration `it`; last-layer groups get lr 0 while frozen."""
    for group in optimizer.param_groups:
        frozen = group.get("is_last_layer", False) and it < schedules.freeze_last_layer_iters
        group["lr"] = 0.0 if frozen else float(schedules.lr[it]) * group.get("lr_mult", 1.0)
        group["weight_decay"] = float(schedules.weight_decay[it]) * group.get("wd_mult", 1.0)


def cancel_last_layer_grads(module: nn.Module) -> None:
    """Zero the grads of every prototype layer (`*.last_layer.*`), as DINO does for the first iterations."""
    for name, param in module.named_parameters():
        if "last_layer" in name and param.grad is not None:
            param.grad.zero_()
