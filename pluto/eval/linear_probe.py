"""Linear probe on frozen embeddings: eva 0.4.5's offline classification protocol, a quick L-BFGS preset, kNN.

eva preset, per task (`probe_protocol_for(dataset, "eva")`, constants from `eva_protocol.EVA_TASKS`,
each tied to its vendored config by a test): a `nn.Linear` head with torch's default init, AdamW lr
3e-4 with torch's default weight decay 0.01, batch 256 in shuffled epochs (the last partial batch
kept), at most 12,500 steps, validation once per epoch, early stopping after `patience` epochs without
a strictly higher monitored score, the best-validation weights score the test split, 5 runs. The
monitored score is eva's (`metrics.eva_monitor_score`): MulticlassAccuracy with torchmetrics' macro
average (a balanced accuracy) for multiclass tasks, BinaryBalancedAccuracy for MHIST and PCam, whose
head is one logit trained with BCEWithLogitsLoss. No config sets a scheduler, so eva's `HeadModule`
default applies: torch's `ConstantLR` with its defaults, lr / 3 for the first 5 epochs, then lr
(eva/core/models/modules/head.py). The loop is `eva_loop.train_epochs` (Lightning's checkpoint and
early-stopping rules); tests/eval/test_probe_parity.py trains eva's own `HeadModule` under eva's
`Trainer` on the same embeddings and checks that both agree.

Sets without an eva config (the generic folder, the derived sets) get a multiclass head with
cross-entropy, crc.yaml's constants (all eva probe configs share lr, batch, steps and runs), and
eva's documented patience rule, 20% of the epochs that max_steps allows on the training set (eva docs,
leaderboards.md: "Early stopping: 20% * [Max epochs]"), which reproduces every eva probe config's
patience from its training-set size (tested): no single config's patience fits sets of any size.

Seeding: eva seeds its process once (`seed_everything(42)`, eva/core/cli/setup.py) and its runs draw
the head's init and the shuffle order from that one stream in turn. Here run `seed` builds the head
under `torch.manual_seed(seed)` (on the CPU, the caller's RNG state restored) and shuffles with a
generator seeded `seed`: the same two sources of spread, each run reproducible on its own.

Quick preset: multinomial logistic regression on standardised features, full-batch L-BFGS from zeros
(convex, so deterministic). Its spread is honest: under pooled cross-validation each seed re-deals the
folds; on a fixed split each seed fits a stratified bootstrap resample of the training set drawn with
that seed (`bootstrap`), so five seeds are five resamples, never five copies of one number.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import nn

from pluto.eval.eva_loop import train_epochs
from pluto.eval.eva_protocol import EVA_TASKS, EvaTask
from pluto.eval.labeled import DatasetLayoutError
from pluto.eval.metrics import balanced_accuracy, eva_monitor_score, eva_predictions
from pluto.eval.threads import SMALL_PROBLEM_NUMEL, cpu_threads

# torch.optim.lr_scheduler.ConstantLR's defaults, which eva's HeadModule applies when a config sets no scheduler
CONSTANT_LR_FACTOR = 1 / 3
CONSTANT_LR_EPOCHS = 5
EVA_PATIENCE_FRACTION = 0.2  # eva docs (leaderboards.md): early stopping after 20% of the max epochs
GENERIC_TASK = "crc"  # the EVA_TASKS entry whose constants sets without an eva config use (patience: the rule)


@dataclass(frozen=True)
class ProbeProtocol:
    name: str  # preset: "eva" | "quick"
    task: str  # the EVA_TASKS entry the constants come from, or "generic"
    solver: str  # "adamw" (eva) | "lbfgs" (quick)
    steps: int  # max_steps (adamw) or L-BFGS iterations
    lr: float
    batch_size: int
    weight_decay: float  # AdamW decoupled decay, or L2 strength for lbfgs
    n_seeds: int
    patience: int | None = None  # epochs without a higher validation score; None: eva's rule (`eva_rule_patience`)
    binary: bool = False  # one logit + BCEWithLogitsLoss (MHIST, PCam)
    lr_factor: float = CONSTANT_LR_FACTOR  # lr x lr_factor for the first lr_factor_epochs epochs (ConstantLR)
    lr_factor_epochs: int = CONSTANT_LR_EPOCHS
    bootstrap: bool = False  # lbfgs on a fixed split: each seed fits a stratified bootstrap resample

    @property
    def selects_on_validation(self) -> bool:
        """AdamW keeps the best-validation checkpoint (eva); the convex L-BFGS fit selects nothing, so a fold held out
        for it would only shrink the training set."""
        return self.solver != "lbfgs"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ProbeProtocol":
        return cls(**d)

    @classmethod
    def from_eva(cls, task: str, eva: EvaTask, patience: int | None) -> "ProbeProtocol":
        return cls("eva", task, "adamw", eva.max_steps, eva.lr, eva.batch_size, eva.weight_decay, eva.n_runs, patience,
                   eva.binary)


EVA_PROBE = ProbeProtocol.from_eva("generic", EVA_TASKS[GENERIC_TASK], patience=None)
QUICK_PROBE = ProbeProtocol("quick", "generic", "lbfgs", steps=50, lr=1.0, batch_size=0, weight_decay=1e-2, n_seeds=5,
                            bootstrap=True)
PROBE_PRESETS = {p.name: p for p in (EVA_PROBE, QUICK_PROBE)}


def probe_protocol_for(dataset: str, preset: str) -> ProbeProtocol:
    """The probe protocol of a suite dataset under a preset: its eva config's constants (eva preset), else the generic ones."""
    if preset not in PROBE_PRESETS:
        raise DatasetLayoutError(f"eval.preset {preset!r} has no linear-probe protocol; one of {sorted(PROBE_PRESETS)}")
    eva = EVA_TASKS.get(dataset)
    if eva is not None and eva.head != "linear":
        raise DatasetLayoutError(f"dataset {dataset!r} is an eva {eva.head} task ({eva.config}), not a linear-probe task")
    if eva is None:
        return PROBE_PRESETS[preset]
    return ProbeProtocol.from_eva(dataset, eva, eva.patience) if preset == "eva" else replace(QUICK_PROBE, task=dataset)


def eva_rule_patience(n_train: int, batch_size: int, max_steps: int) -> int:
    """eva's early-stopping patience for a training set: 20% of the epochs max_steps allows, rounded up."""
    return math.ceil(EVA_PATIENCE_FRACTION * max_steps / math.ceil(n_train / batch_size))


@dataclass(frozen=True)
class ProbeFit:
    """One run's fit: the test predictions come from the best-validation weights (adamw)."""

    test_pred: np.ndarray
    test_balanced_accuracy: float
    best_epoch: int  # 0-based epoch whose weights scored the test split (lbfgs: 0)
    best_val_score: float  # eva's monitored score there (lbfgs, which selects nothing: NaN)
    epochs: int
    steps: int
    val_history: tuple[float, ...] = ()  # the monitored score at each validation check (one per epoch)


def _tensor(x, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float32, device=device)


def stratified_bootstrap(labels, seed: int) -> np.ndarray:
    """Indices of a bootstrap resample drawn within each class, so every class keeps its count (none drops out)."""
    from sklearn.utils import resample

    labels = np.asarray(labels)
    return resample(np.arange(len(labels)), replace=True, stratify=labels, random_state=seed)


def _fit_lbfgs(x: torch.Tensor, y: torch.Tensor, n_classes: int, p: ProbeProtocol) -> nn.Linear:
    head = nn.Linear(x.shape[1], n_classes, device=x.device)
    nn.init.zeros_(head.weight), nn.init.zeros_(head.bias)  # convex problem: a fixed start makes the fit seed-free
    opt = torch.optim.LBFGS(head.parameters(), lr=p.lr, max_iter=p.steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(head(x), y) + p.weight_decay * head.weight.pow(2).sum() / 2
        loss.backward()
        return loss

    opt.step(closure)
    return head


def _logits(head: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return head(x).squeeze(-1)  # as eva's HeadModule.forward: (N,) for a one-logit head


def _fit_adamw(x, y, val_x, val_y, n_classes: int, p: ProbeProtocol, seed: int):
    if len(val_y) == 0:
        raise ValueError("the eva probe selects its checkpoint on a validation set, and this one is empty")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(x.shape[1], 1 if p.binary else n_classes).to(x.device)  # torch's default init, seeded
    opt = torch.optim.AdamW(head.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=p.lr_factor, total_iters=p.lr_factor_epochs)
    target = y.float() if p.binary else y
    loss_fn = nn.functional.binary_cross_entropy_with_logits if p.binary else nn.functional.cross_entropy

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        idx = idx.to(x.device, non_blocking=True)
        return loss_fn(_logits(head, x[idx]), target[idx])

    def validate() -> float:
        return eva_monitor_score(eva_predictions(_logits(head, val_x), p.batch_size), val_y, n_classes, p.binary)

    patience = eva_rule_patience(x.shape[0], p.batch_size, p.steps) if p.patience is None else p.patience
    result = train_epochs(head, opt, x.shape[0], p.batch_size, batch_loss, validate, patience,
                          torch.Generator().manual_seed(seed), max_steps=p.steps, scheduler=sched)
    return head, result


def fit_linear_probe(train_x, train_y, val_x, val_y, test_x, test_y, protocol: ProbeProtocol, seed: int,
                     n_classes: int | None = None, device: str = "cpu") -> ProbeFit:
    """Train a linear head on (N, D) embeddings and score the test set (eva: with the best-validation weights).

    Labels are ints in [0, n_classes); a binary protocol needs n_classes == 2. The lbfgs solver does
    not use the validation set (a convex fit selects nothing).
    """
    small = device == "cpu" and np.asarray(train_x).size < SMALL_PROBLEM_NUMEL
    with cpu_threads(1 if small else torch.get_num_threads()):
        return _fit_linear_probe(train_x, train_y, val_x, val_y, test_x, test_y, protocol, seed, n_classes, device)


def _fit_linear_probe(train_x, train_y, val_x, val_y, test_x, test_y, protocol, seed, n_classes, device) -> ProbeFit:
    dev = torch.device(device)
    k = n_classes or int(max(np.max(train_y), np.max(val_y, initial=0), np.max(test_y)) + 1)
    if protocol.binary and k != 2:
        raise DatasetLayoutError(f"probe task {protocol.task!r} is binary (one logit, as eva's config), "
                                 f"but the set has {k} classes")
    if protocol.solver == "lbfgs" and protocol.bootstrap:
        idx = stratified_bootstrap(train_y, seed)
        train_x, train_y = np.asarray(train_x)[idx], np.asarray(train_y)[idx]
    tx, vx, sx = _tensor(train_x, dev), _tensor(val_x, dev), _tensor(test_x, dev)
    ty = torch.as_tensor(np.asarray(train_y), dtype=torch.long, device=dev)
    vy = torch.as_tensor(np.asarray(val_y), dtype=torch.long, device=dev)
    if protocol.solver == "lbfgs":
        mu, sd = tx.mean(0), tx.std(0).clamp_min(1e-6)
        head = _fit_lbfgs((tx - mu) / sd, ty, k, protocol)
        with torch.no_grad():
            pred = head((sx - mu) / sd).argmax(1).cpu().numpy()
        return ProbeFit(pred, balanced_accuracy(test_y, pred), 0, float("nan"), 1, protocol.steps)
    if protocol.solver != "adamw":
        raise ValueError(f"unknown probe solver {protocol.solver!r} (adamw | lbfgs)")
    head, r = _fit_adamw(tx, ty, vx, vy, k, protocol, seed)
    with torch.no_grad():
        pred = eva_predictions(_logits(head, sx), protocol.batch_size).cpu().numpy()
    return ProbeFit(pred, balanced_accuracy(test_y, pred), r.best_epoch, r.best_score, r.epochs, r.steps, r.val_history)


def fold_count(labels, n_folds: int, groups=None) -> int:
    """Folds for pooled cross-validation: n_folds, fewer when the smallest class has fewer items (or, with
    `groups`, fewer groups), never under 2; a class with a single item (or group) is refused."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    unit = "items"
    if groups is not None:
        groups, unit = np.asarray(groups), "groups"
        counts = np.array([len(np.unique(groups[labels == c])) for c in classes])
    per_class = ", ".join(f"{c}: {n}" for c, n in zip(classes.tolist(), counts.tolist()))
    if len(classes) < 2:
        raise DatasetLayoutError(f"pooled cross-validation needs at least 2 classes, got {per_class or 'none'} ({unit} per label)")
    if counts.min() < 2:
        few = ", ".join(str(c) for c, n in zip(classes.tolist(), counts.tolist()) if n < 2)
        raise DatasetLayoutError(f"pooled cross-validation needs at least 2 {unit} per class; label {few} has fewer "
                                 f"({unit} per label: {per_class})")
    return int(max(2, min(n_folds, counts.min())))


def stratified_folds(labels, n_folds: int, seed: int, groups=None) -> np.ndarray:
    """Fold index per sample from scikit-learn's StratifiedKFold (StratifiedGroupKFold with `groups`: patient,
    slide or region ids, so no group is split), shuffled with `seed`; `fold_count` folds, renumbered so none is empty."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    labels = np.asarray(labels)
    k = fold_count(labels, n_folds, groups)
    splitter = (StratifiedKFold if groups is None else StratifiedGroupKFold)(n_splits=k, shuffle=True, random_state=seed)
    folds = np.empty(len(labels), dtype=np.int64)
    for f, (_, test) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        folds[test] = f
    return np.unique(folds, return_inverse=True)[1].reshape(-1)


def training_folds(k: int, validate: bool) -> int:
    """Folds that train in `pooled_out_of_fold` with k folds: the corrected SE's n_train / n_test."""
    return k - 2 if validate and k > 2 else k - 1


def pooled_out_of_fold(fit_fold, y, n_folds: int, seed: int, groups=None, validate: bool = True) -> float:
    """Balanced accuracy of pooled out-of-fold predictions when a labeled set has no split.

    Fold f is the test fold, fold f+1 the validation fold (best-checkpoint selection), the rest
    train; `fit_fold(train_mask, val_mask, test_mask, fold_seed)` returns the test predictions. With
    2 folds (the smallest class has 2 or 3 items) nothing is left to hold out: the other fold both
    trains and validates, so selection sees training data only and the test fold stays unseen.
    `validate=False` (a fit that selects nothing, `ProbeProtocol.selects_on_validation`): every
    fold but the test fold trains, and the validation mask is empty.
    Pooling all N out-of-fold predictions before scoring keeps a small set's estimate stable.
    """
    y = np.asarray(y)
    folds = stratified_folds(y, n_folds, seed, groups)
    k = int(folds.max()) + 1
    pred = np.empty_like(y)
    for f in range(k):
        te = folds == f
        if not validate:
            va, tr = np.zeros_like(te), ~te
        elif k > 2:
            va = folds == (f + 1) % k
            tr = ~(te | va)
        else:
            va = tr = ~te
        pred[te] = fit_fold(tr, va, te, seed * 1000 + f)
    return balanced_accuracy(y, pred)


def cross_validated_probe(x, y, protocol: ProbeProtocol, seed: int, n_folds: int = 4, device: str = "cpu",
                          groups=None) -> float:
    """Linear probe scored on pooled out-of-fold predictions (see `pooled_out_of_fold`); the seed's spread is the
    fold assignment, so the quick preset's bootstrap is off here."""
    y = np.asarray(y)
    k = int(y.max() + 1)
    protocol = replace(protocol, bootstrap=False)
    return pooled_out_of_fold(
        lambda tr, va, te, s: fit_linear_probe(x[tr], y[tr], x[va], y[va], x[te], y[te], protocol, s, k, device).test_pred,
        y, n_folds, seed, groups, protocol.selects_on_validation)


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
    """Balanced accuracy of the quick (L-BFGS logistic regression) probe on the whole training set: one call for
    training monitors."""
    fit = fit_linear_probe(train_emb, train_y, test_emb[:0], np.asarray(test_y)[:0], test_emb, test_y,
                           replace(QUICK_PROBE, bootstrap=False), 0, int(max(np.max(train_y), np.max(test_y)) + 1))
    return fit.test_balanced_accuracy
