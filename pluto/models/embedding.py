"""Frozen-encoder embeddings: CLS, or CLS concatenated with the mean patch token.

PLUTO-4 reports both (paper §4.1 "Embedding Selection", Table 2/3: CLS + Mean(Patch-Token));
registers are excluded from the mean, as in Midnight's CLS+Mean (Fig. 1B: mean of the
(image/patch)^2 patch tokens). The paper reports PLUTO-4S-8 and -16 separately, so every
embedding records the patch size that produced it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import nn

EmbeddingMode = Literal["cls", "cls+mean"]


@dataclass(frozen=True)
class Embedding:
    """values (B, D) for "cls" or (B, 2D) for "cls+mean"; patch_size in input px per token side."""

    values: torch.Tensor
    mode: EmbeddingMode
    patch_size: int

    def to_dict(self) -> dict[str, Any]:
        return {"values": self.values.tolist(), "mode": self.mode, "patch_size": self.patch_size}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Embedding:
        return cls(values=torch.tensor(d["values"]), mode=d["mode"], patch_size=int(d["patch_size"]))


def _model_patch_size(model: nn.Module) -> int:
    if hasattr(model, "patch_sizes"):
        return int(model.patch_size)
    return int(model.patch_embed.patch_size[0])  # plain timm ViT


@torch.no_grad()
def embed(
    model: nn.Module, x: torch.Tensor, mode: EmbeddingMode = "cls", patch_size: int | None = None
) -> Embedding:
    """Embed images (B, C, H, W), normalised with the model's pretrained_cfg mean/std.

    Runs the model in eval mode without gradients (frozen-encoder protocol) and restores its
    previous mode. Works for PLUTO models at any of their patch sizes and for plain timm ViTs at
    their own patch size.
    """
    if mode not in get_args(EmbeddingMode):
        raise ValueError(f"embedding mode must be one of {get_args(EmbeddingMode)}, got {mode!r}")
    used_patch = int(patch_size) if patch_size is not None else _model_patch_size(model)
    was_training = model.training
    model.eval()
    try:
        if hasattr(model, "patch_sizes"):
            tokens = model.forward_features(x, patch_size=used_patch)
        elif used_patch != _model_patch_size(model):
            raise ValueError(f"{type(model).__name__} has a fixed patch size {_model_patch_size(model)}, got {used_patch}")
        else:
            tokens = model.forward_features(x)
    finally:
        model.train(was_training)
    cls = tokens[:, 0]
    if mode == "cls":
        values = cls
    else:
        values = torch.cat([cls, tokens[:, model.num_prefix_tokens :].mean(dim=1)], dim=-1)
    return Embedding(values=values, mode=mode, patch_size=used_patch)
