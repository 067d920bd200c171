"""Linear probe on frozen embeddings: the EVA protocol and a quick closed-form-style preset, plus kNN.

EVA protocol (kaiko-eva offline classification configs, as used for PLUTO-4 Table 1 and Midnight
Table 2): frozen encoder, one linear layer, AdamW lr 3e-4, batch 256, 12,500 steps with cosine
decay, validation balanced accuracy tracked and the best-validation weights used for the test
score, 5 runs (seeds) per patch task; Midnight disabled early stopping so every run converges,
which we follow. The quick preset fits a multinomial logistic regression on standardised
features with full-batch L-BFGS: deterministic, seconds on CPU, for the demo and tests.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from pluto.eval.metrics import balanced_accuracy
from pluto.eval.threads import SMALL_PROBLEM_NUMEL, cpu_threads

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeProtocol:
    name: str
    solver: str  # "adamw" (EVA) | "lbfgs" (quick)
    steps: int  # optimizer steps (adamw) or L-BFGS iterations
    lr: float
    batch_size: int
    weight_decay: float  # AdamW decoupled decay, or L2 strength for lbfgs
    n_seeds: int
    eval_every: int  # validation interval for best-checkpoint selection (adamw)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ProbeProtocol":
        return cls(**d)


EVA_PROBE = ProbeProtocol("eva", "adamw", steps=12_500, lr=3e-4, batch_size=256, weight_decay=0.0, n_seeds=5, eval_every=250)
QUICK_PROBE = ProbeProtocol("quick", "lbfgs", steps=50, lr=1.0, batch_size=0, weight_decay=1e-2, n_seeds=5, eval_every=0)
PROBE_PRESETS = {p.name: p for p in (EVA_PROBE, QUICK_PROBE)}


@dataclass(frozen=True)
class ProbeFit:
    """One seed's fit: the test predictions come from the best-validation weights."""

    test_pred: np.ndarray
    test_balanced_accuracy: float
    best_step: int
    best_val_balanced_accuracy: float
    val_history: tuple[tuple[int, float], ...] = ()  # (step, validation balanced accuracy) at each check


def _tensor(x, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float32, device=device)


def _fit_lbfgs(x: torch.Tensor, y: torch.Tensor, n_classes: int, p: ProbeProtocol) -> nn.Linear:
    head = nn.Linear(x.shape[1], n_classes, device=x.device)
    nn.init.zeros_(head.weight), nn.init.zeros_(head.bias)  # convex problem: a fixed start makes it seed-free
    opt = torch.optim.LBFGS(head.parameters(), lr=p.lr, max_iter=p.steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(head(x), y) + p.weight_decay * head.weight.pow(2).sum() / 2
        loss.backward()
        return loss

    opt.step(closure)
    return head


def _fit_adamw(x, y, val_x, val_y, n_classes: int, p: ProbeProtocol, gen: torch.Generator):
    head = nn.Linear(x.shape[1], n_classes, device=x.device)
    with torch.no_grad():  # seeded init (nn.Linear's default draws from the global RNG)
        bound = 1.0 / x.shape[1] ** 0.5
        head.weight.copy_(torch.rand(head.weight.shape, generator=gen) * 2 * bound - bound)
        head.bias.copy_(torch.rand(head.bias.shape, generator=gen) * 2 * bound - bound)
    opt = torch.optim.AdamW(head.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=p.steps)
    best = (-1.0, 0, {k: v.clone() for k, v in head.state_dict().items()})
    history = []
    n = x.shape[0]
    # every step's batch drawn at once on the host generator (same draws on any device) and moved
    # in one copy, so the loop never waits on a per-step host-to-device transfer
    batches = torch.randint(0, n, (p.steps, min(p.batch_size, n)), generator=gen).to(x.device)
    for step, idx in enumerate(batches, start=1):
        loss = nn.functional.cross_entropy(head(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % p.eval_every == 0 or step == p.steps:
            with torch.no_grad():
                score = balanced_accuracy(val_y.cpu(), head(val_x).argmax(1).cpu())
            history.append((step, score))
            if score > best[0]:  # strictly better: the earliest best step wins ties
                best = (score, step, {k: v.clone() for k, v in head.state_dict().items()})
    head.load_state_dict(best[2])
    return head, best[1], best[0], tuple(history)


def fit_linear_probe(train_x, train_y, val_x, val_y, test_x, test_y, protocol: ProbeProtocol, seed: int,
                     n_classes: int | None = None, device: str = "cpu") -> ProbeFit:
    """Train a linear head on (N, D) embeddings and score the test set with the best-validation weights.

    Labels are ints in [0, n_classes). With the lbfgs solver validation is not needed (convex fit).
    """
    small = device == "cpu" and np.asarray(train_x).size < SMALL_PROBLEM_NUMEL
    with cpu_threads(1 if small else torch.get_num_threads()):
        return _fit_linear_probe(train_x, train_y, val_x, val_y, test_x, test_y, protocol, seed, n_classes, device)


def _fit_linear_probe(train_x, train_y, val_x, val_y, test_x, test_y, protocol, seed, n_classes, device) -> ProbeFit:
    dev = torch.device(device)
    tx, vx, sx = _tensor(train_x, dev), _tensor(val_x, dev), _tensor(test_x, dev)
    ty = torch.as_tensor(np.asarray(train_y), dtype=torch.long, device=dev)
    vy = torch.as_tensor(np.asarray(val_y), dtype=torch.long, device=dev)
    k = n_classes or int(max(ty.max(), vy.max(), int(np.max(test_y))) + 1)
    if protocol.solver == "lbfgs":
        mu, sd = tx.mean(0), tx.std(0).clamp_min(1e-6)
        tx, vx, sx = (tx - mu) / sd, (vx - mu) / sd, (sx - mu) / sd
        head = _fit_lbfgs(tx, ty, k, protocol)
        with torch.no_grad():
            best_val = balanced_accuracy(vy.cpu(), head(vx).argmax(1).cpu()) if len(vy) else float("nan")
        best_step, history = protocol.steps, ()
    elif protocol.solver == "adamw":
        gen = torch.Generator().manual_seed(seed)
        head, best_step, best_val, history = _fit_adamw(tx, ty, vx, vy, k, protocol, gen)
    else:
        raise ValueError(f"unknown probe solver {protocol.solver!r} (adamw | lbfgs)")
    with torch.no_grad():
        pred = head(sx).argmax(1).cpu().numpy()
    return ProbeFit(pred, balanced_accuracy(test_y, pred), best_step, best_val, history)


def stratified_folds(labels, n_folds: int, seed: int, groups=None) -> np.ndarray:
    """Fold index per sample: each class's samples shuffled (seeded) and dealt round-robin over folds.

    With `groups` (patient, slide or region ids) whole groups are dealt instead, so no group is split.
    """
    rng = np.random.default_rng(seed)
    if groups is not None:
        uniq, inverse = np.unique(np.asarray(groups), return_inverse=True)
        return (rng.permutation(len(uniq)) % n_folds)[inverse]
    labels = np.asarray(labels)
    folds = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        folds[idx] = (np.arange(len(idx)) + offset) % n_folds  # offset keeps fold sizes even across classes
        offset += len(idx)
    return folds


def pooled_out_of_fold(fit_fold, y, n_folds: int, seed: int, groups=None) -> float:
    """Balanced accuracy of pooled out-of-fold predictions when a labeled set has no split.

    Fold f is the test fold, fold f+1 the validation fold (best-checkpoint selection), the rest
    train; `fit_fold(train_mask, val_mask, test_mask, fold_seed)` returns the test predictions.
    Pooling all N out-of-fold predictions before scoring keeps a small set's estimate stable.
    """
    y = np.asarray(y)
    folds = stratified_folds(y, n_folds, seed, groups)
    pred = np.empty_like(y)
    for f in range(n_folds):
        te, va = folds == f, folds == (f + 1) % n_folds
        pred[te] = fit_fold(~(te | va), va, te, seed * 1000 + f)
    return balanced_accuracy(y, pred)


def cross_validated_probe(x, y, protocol: ProbeProtocol, seed: int, n_folds: int = 4, device: str = "cpu",
                          groups=None) -> float:
    """Linear probe scored on pooled out-of-fold predictions (see `pooled_out_of_fold`)."""
    y = np.asarray(y)
    k = int(y.max() + 1)
    return pooled_out_of_fold(
        lambda tr, va, te, s: fit_linear_probe(x[tr], y[tr], x[va], y[va], x[te], y[te], protocol, s, k, device).test_pred,
        y, n_folds, seed, groups)


def knn_accuracy(train_emb, train_y, test_emb, test_y, k: int = 20) -> float:
    """Top-1 accuracy of a cosine-similarity kNN classifier (votes weighted by similarity), a cheap SSL monitor."""
    a = nn.functional.normalize(_tensor(train_emb, "cpu"), dim=1)
    b = nn.functional.normalize(_tensor(test_emb, "cpu"), dim=1)
    ty = torch.as_tensor(np.asarray(train_y), dtype=torch.long)
    k = min(k, a.shape[0])
    sim, idx = (b @ a.T).topk(k, dim=1)
    votes = torch.zeros(b.shape[0], int(ty.max()) + 1).scatter_add_(1, ty[idx], sim.clamp_min(0) + 1e-6)
    pred = votes.argmax(1).numpy()
    return float((pred == np.asarray(test_y)).mean())


def quick_linear_probe(train_emb, train_y, test_emb, test_y) -> float:
    """Balanced accuracy of the quick (L-BFGS logistic regression) probe: one call for training monitors."""
    fit = fit_linear_probe(train_emb, train_y, test_emb[:0], np.asarray(test_y)[:0], test_emb, test_y, QUICK_PROBE, 0,
                           int(max(np.max(train_y), np.max(test_y)) + 1))
    return fit.test_balanced_accuracy
