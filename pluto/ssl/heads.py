"""DINO / iBOT projection head: MLP -> L2-normalised bottleneck -> weight-normalised prototypes.

DINOv2 `DINOHead`: `n_layers` linear layers with GELU (hidden 2048, bottleneck 256), the
bottleneck L2-normalised, then a bias-free prototype layer whose rows are normalised to unit
length (weight norm with the gain fixed to 1). Logits are therefore cosine similarities in
[-1, 1]: the temperatures alone set their sharpness, which is what keeps the head from the
overflows PLUTO-4 §3.2 reports. The prototype layer is `last_layer`, frozen at the start of
training (`pluto.ssl.optim.cancel_last_layer_grads`). The MLP starts trunc-normal (std 0.02), the
prototypes as `nn.Linear`'s default, as dinov2 builds its `last_layer` after the MLP's init: only
their direction enters the logits, but their norm sets how fast Adam turns them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn


class PrototypeLayer(nn.Module):
    """Linear map onto `n_prototypes` unit-norm rows (weight norm, gain 1)."""

    def __init__(self, in_dim: int, n_prototypes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_prototypes, in_dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's default, as dinov2's weight_v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, F.normalize(self.weight, dim=-1))


class DINOHead(nn.Module):
    """(..., in_dim) -> (..., n_prototypes) logits (cosine similarities to the prototypes)."""

    def __init__(
        self, in_dim: int, n_prototypes: int, hidden_dim: int = 2048, bottleneck_dim: int = 256, n_layers: int = 3
    ) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (max(n_layers, 1) - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.last_layer = PrototypeLayer(bottleneck_dim, n_prototypes)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        eps = 1e-6 if x.dtype in (torch.float16, torch.bfloat16) else 1e-12
        return self.last_layer(F.normalize(x, dim=-1, eps=eps))
