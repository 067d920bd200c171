"""Attention-based MIL (Ilse et al. 2018) for slide-level tasks on bags of tile embeddings.

Architecture as eva's `ABMIL` (`eva/vision/models/networks/abmil.py`): linear projection to 128,
gated attention (tanh x sigmoid, hidden 128), attention-weighted sum, MLP (128, 64) classifier.
Bags are zero-padded and the padding is masked out of the attention. EVA's PANDA protocol trains 20 runs and keeps the
best-validation checkpoint (PLUTO-4 §4.2: balanced accuracy over 20 runs); the quick preset
trains fewer epochs and runs for tests and the demo.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pluto.eval.metrics import balanced_accuracy
from pluto.eval.threads import SMALL_PROBLEM_NUMEL, cpu_threads


@dataclass(frozen=True)
class MilProtocol:
    name: str
    epochs: int
    lr: float
    batch_size: int
    n_seeds: int
    max_instances: int  # tiles sampled per bag per step (all at evaluation)


EVA_MIL = MilProtocol("eva", epochs=49, lr=1e-3, batch_size=32, n_seeds=20, max_instances=1000)  # eva panda config: 20 runs, 49 epochs
QUICK_MIL = MilProtocol("quick", epochs=30, lr=1e-3, batch_size=8, n_seeds=3, max_instances=64)


class ABMIL(nn.Module):
    def __init__(self, in_dim: int, n_classes: int, proj_dim: int = 128, attn_dim: int = 128) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, proj_dim)
        self.attn_v = nn.Linear(proj_dim, attn_dim)
        self.attn_u = nn.Linear(proj_dim, attn_dim)
        self.attn_w = nn.Linear(attn_dim, 1)
        self.classifier = nn.Sequential(nn.Linear(proj_dim, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, n_classes))

    def forward(self, bags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """bags (B, N, D), mask (B, N) True for real tiles -> logits (B, C)."""
        h = self.proj(bags)
        a = self.attn_w(torch.tanh(self.attn_v(h)) * torch.sigmoid(self.attn_u(h))).squeeze(-1)
        a = torch.softmax(a.masked_fill(~mask, float("-inf")), dim=1)
        return self.classifier((a.unsqueeze(-1) * h).sum(1))


def _pad(bags: list[np.ndarray], idx, max_n: int, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    chosen = []
    for i in idx:
        b = torch.as_tensor(bags[i], dtype=torch.float32)
        if gen is not None and len(b) > max_n:
            b = b[torch.randperm(len(b), generator=gen)[:max_n]]
        chosen.append(b)
    n = max(len(b) for b in chosen)
    x = torch.zeros(len(chosen), n, chosen[0].shape[1])
    mask = torch.zeros(len(chosen), n, dtype=torch.bool)
    for j, b in enumerate(chosen):
        x[j, : len(b)], mask[j, : len(b)] = b, True
    return x, mask


def _predict(model: ABMIL, bags, batch: int) -> np.ndarray:
    out = []
    with torch.no_grad():
        for s in range(0, len(bags), batch):
            x, m = _pad(bags, range(s, min(s + batch, len(bags))), 0, None)
            out.append(model(x, m).argmax(1))
    return torch.cat(out).numpy()


def fit_abmil(train_bags: list[np.ndarray], train_y, val_bags, val_y, test_bags, test_y, protocol: MilProtocol,
              seed: int, n_classes: int) -> float:
    """Train on bags (each (n_tiles, D)); return test balanced accuracy of the best-validation epoch."""
    small = sum(b.size for b in train_bags) < SMALL_PROBLEM_NUMEL
    with cpu_threads(1 if small else torch.get_num_threads()):
        return _fit_abmil(train_bags, train_y, val_bags, val_y, test_bags, test_y, protocol, seed, n_classes)


def _fit_abmil(train_bags, train_y, val_bags, val_y, test_bags, test_y, protocol: MilProtocol, seed: int, n_classes: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # layer init draws from the global RNG
    model = ABMIL(train_bags[0].shape[1], n_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=protocol.lr)
    ty = torch.as_tensor(np.asarray(train_y), dtype=torch.long)
    best = (-1.0, {k: v.clone() for k, v in model.state_dict().items()})
    for _ in range(protocol.epochs):
        model.train()
        order = torch.randperm(len(train_bags), generator=gen)
        for s in range(0, len(order), protocol.batch_size):
            idx = order[s : s + protocol.batch_size].tolist()
            x, m = _pad(train_bags, idx, protocol.max_instances, gen)
            loss = nn.functional.cross_entropy(model(x, m), ty[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        score = balanced_accuracy(val_y, _predict(model, val_bags, protocol.batch_size))
        if score > best[0]:
            best = (score, {k: v.clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[1])
    return balanced_accuracy(test_y, _predict(model, test_bags, protocol.batch_size))
