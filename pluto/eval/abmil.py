"""Attention-based MIL (Ilse et al. 2018) for slide-level tasks on bags of tile embeddings.

The network is eva's `ABMIL` (`eva.vision.models.networks`, imported lazily): linear projection to
128, gated attention (tanh x sigmoid, hidden 128), attention-weighted sum, MLP (128, 64) classifier.
Bags are padded with -inf rows, which eva masks out of the attention. EVA's PANDA protocol trains
20 runs and keeps the best-validation checkpoint (PLUTO-4 §4.2: balanced accuracy over 20 runs); the quick preset
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
    standardise: bool = False  # z-score features with the training tiles' mean/std (quick preset, like the quick probe)


EVA_MIL = MilProtocol("eva", epochs=49, lr=1e-3, batch_size=32, n_seeds=20, max_instances=1000)  # eva panda config: 20 runs, 49 epochs
QUICK_MIL = MilProtocol("quick", epochs=30, lr=1e-3, batch_size=8, n_seeds=3, max_instances=64, standardise=True)

MIL_PRESETS = {p.name: p for p in (EVA_MIL, QUICK_MIL)}


@dataclass(frozen=True)
class MilFit:
    test_pred: np.ndarray
    test_balanced_accuracy: float
    best_epoch: int


def build_abmil(in_dim: int, n_classes: int) -> nn.Module:
    """eva's ABMIL (projection 128, gated attention 128, MLP (128, 64)); padded instances are rows of -inf."""
    try:
        from eva.vision.models.networks import ABMIL
    except ImportError as exc:
        raise ImportError(f"ABMIL uses kaiko-eva's network: pip install 'kaiko-eva[vision]' ({exc})") from exc
    return ABMIL(input_size=in_dim, output_size=n_classes, projected_input_size=128)


def _pad(bags: list[np.ndarray], idx, max_n: int, gen: torch.Generator | None) -> torch.Tensor:
    chosen = []
    for i in idx:
        b = torch.as_tensor(bags[i], dtype=torch.float32)
        if gen is not None and len(b) > max_n:
            b = b[torch.randperm(len(b), generator=gen)[:max_n]]
        chosen.append(b)
    n = max(len(b) for b in chosen)
    x = torch.full((len(chosen), n, chosen[0].shape[1]), float("-inf"))
    for j, b in enumerate(chosen):
        x[j, : len(b)] = b
    return x


def _predict(model: nn.Module, bags, batch: int) -> np.ndarray:
    out = []
    with torch.no_grad():
        for s in range(0, len(bags), batch):
            out.append(model(_pad(bags, range(s, min(s + batch, len(bags))), 0, None)).argmax(1))
    return torch.cat(out).numpy()


def fit_abmil(train_bags: list[np.ndarray], train_y, val_bags, val_y, test_bags, test_y, protocol: MilProtocol,
              seed: int, n_classes: int) -> MilFit:
    """Train on bags (each (n_tiles, D)); score the test bags with the best-validation epoch's weights."""
    small = sum(b.size for b in train_bags) < SMALL_PROBLEM_NUMEL
    with cpu_threads(1 if small else torch.get_num_threads()):
        return _fit_abmil(train_bags, train_y, val_bags, val_y, test_bags, test_y, protocol, seed, n_classes)


def _fit_abmil(train_bags, train_y, val_bags, val_y, test_bags, test_y, protocol: MilProtocol, seed: int, n_classes: int) -> MilFit:
    if protocol.standardise:
        tiles = np.concatenate(train_bags)
        mu, sd = tiles.mean(0), np.maximum(tiles.std(0), 1e-6)
        train_bags, val_bags, test_bags = ([(b - mu) / sd for b in bags] for bags in (train_bags, val_bags, test_bags))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # layer init draws from the global RNG
    model = build_abmil(train_bags[0].shape[1], n_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=protocol.lr)
    ty = torch.as_tensor(np.asarray(train_y), dtype=torch.long)
    best = (-1.0, 0, {k: v.clone() for k, v in model.state_dict().items()})
    for epoch in range(protocol.epochs):
        model.train()
        order = torch.randperm(len(train_bags), generator=gen)
        for s in range(0, len(order), protocol.batch_size):
            idx = order[s : s + protocol.batch_size].tolist()
            loss = nn.functional.cross_entropy(model(_pad(train_bags, idx, protocol.max_instances, gen)), ty[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        score = balanced_accuracy(val_y, _predict(model, val_bags, protocol.batch_size))
        if score > best[0]:
            best = (score, epoch, {k: v.clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[2])
    model.eval()
    pred = _predict(model, test_bags, protocol.batch_size)
    return MilFit(pred, balanced_accuracy(test_y, pred), best[1])
