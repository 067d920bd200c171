"""Attention-based MIL (Ilse et al. 2018) for slide-level tasks on bags of tile embeddings, as eva 0.4.5 runs it.

The network is eva's `ABMIL` (`eva.vision.models.networks`, imported lazily): linear projection to
128, gated attention (tanh x sigmoid, hidden 128), attention-weighted sum, MLP (128, 64) classifier.
The protocol is the task's eva config (`eva_protocol.EVA_TASKS`: panda, panda_small, camelyon16,
camelyon16_small): AdamW (lr 1e-3, torch's default weight decay 0.01, betas (0.9, 0.999)), batch
32, up to 100 epochs, early stopping after 20 epochs without a higher validation score, the best
epoch's weights score the test split (eva_loop.py), 20 runs. Binary tasks (Camelyon16) have one
logit and `BCEWithLogitsLoss`, predicted positive at logit > 0 (eva's binary metrics threshold the
sigmoid at 0.5). The monitored score is balanced accuracy: eva's `val/MulticlassAccuracy` (macro) and
`val/BinaryBalancedAccuracy` are the same number whenever every class occurs in the validation split.

Bags as eva's `MultiEmbeddingsClassificationDataset` + `Pad2DTensor(pad_size)` serve them: every
embedding of a slide, the same each epoch (no resampling; eva's `ForegroundGridSampler` already capped
the slide at `pad_size` tiles, with a fixed seed, when the embeddings were written), padded with -inf
rows that ABMIL masks out of the attention. Masking is exact, so a batch is padded to its longest bag
rather than to `pad_size` (same outputs, less work); a bag longer than `pad_size`, which eva's sampler
never writes, is an error.

Seeding: eva seeds its process once (`seed_everything(42)`) and its runs draw from that one stream,
each with a freshly built head (its config passes the head as a dict, built in `configure_model`
after the per-run clone) and its own shuffle order. Here run `seed` builds the head under
`torch.manual_seed(seed)` and shuffles with a generator seeded `seed`: the same two sources of
spread, and each run reproducible on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from pluto.eval.eva_loop import train_epochs
from pluto.eval.eva_protocol import EVA_TASKS, EvaTask
from pluto.eval.labeled import DatasetLayoutError
from pluto.eval.metrics import balanced_accuracy
from pluto.eval.threads import SMALL_PROBLEM_NUMEL, cpu_threads


@dataclass(frozen=True)
class MilProtocol:
    name: str  # preset: "eva" | "quick"
    task: str  # the EVA_TASKS entry the constants come from
    max_epochs: int
    patience: int  # validation checks (epochs) without a higher score before stopping
    lr: float
    weight_decay: float
    batch_size: int
    n_seeds: int
    pad_size: int  # tiles per slide at most (eva's sampler max_samples = Pad2DTensor pad_size)
    binary: bool  # one logit + BCE (Camelyon16)
    standardise: bool = False  # z-score features with the training tiles' mean/std (quick preset)

    @classmethod
    def from_eva(cls, task: str, eva: EvaTask) -> "MilProtocol":
        return cls("eva", task, eva.max_epochs, eva.patience, eva.lr, eva.weight_decay, eva.batch_size, eva.n_runs,
                   eva.pad_size, eva.binary)


# Bag tasks without an eva config (the derived `magnification_bags`) follow eva's PANDA-Small config:
# a multiclass ABMIL task on a small set, the slide-level task PLUTO-4 reports.
MIL_DEFAULT_TASK = "panda_small"
# The quick preset (tests, demo): fewer and smaller bags and epochs; the same loop, selection and seeding.
QUICK_MIL = dict(max_epochs=30, patience=10, batch_size=8, n_seeds=3, pad_size=64, standardise=True)
MIL_PRESETS = ("eva", "quick")


def mil_protocol(preset: str, dataset: str) -> MilProtocol:
    """The ABMIL protocol of a dataset (its EVA_TASKS entry, or MIL_DEFAULT_TASK's) under a preset."""
    task = dataset if dataset in EVA_TASKS else MIL_DEFAULT_TASK
    eva = EVA_TASKS[task]
    if eva.head != "abmil":
        raise DatasetLayoutError(f"dataset {dataset!r} is an eva {eva.head} task ({eva.config}), not a slide-level ABMIL task")
    if preset not in MIL_PRESETS:
        raise DatasetLayoutError(f"eval.preset {preset!r} has no ABMIL protocol; one of {list(MIL_PRESETS)}")
    base = MilProtocol.from_eva(task, eva)
    return base if preset == "eva" else replace(base, name="quick", **QUICK_MIL)


@dataclass(frozen=True)
class MilFit:
    test_pred: np.ndarray
    test_balanced_accuracy: float
    best_epoch: int
    epochs: int
    val_history: tuple[float, ...]


def build_abmil(in_dim: int, out_features: int) -> nn.Module:
    """eva's ABMIL (projection 128, gated attention 128, MLP (128, 64)); padded instances are rows of -inf."""
    try:
        from eva.vision.models.networks import ABMIL
    except ImportError as exc:
        raise ImportError(f"ABMIL uses kaiko-eva's network: pip install 'kaiko-eva[vision]' ({exc})") from exc
    return ABMIL(input_size=in_dim, output_size=out_features, projected_input_size=128)


def pad_bags(bags: list[np.ndarray], idx, device: str = "cpu") -> torch.Tensor:
    """(len(idx), longest bag, D), -inf rows after each bag's tiles (eva's Pad2DTensor value)."""
    chosen = [torch.as_tensor(bags[i], dtype=torch.float32) for i in idx]
    x = torch.full((len(chosen), max(len(b) for b in chosen), chosen[0].shape[1]), float("-inf"))
    for j, b in enumerate(chosen):
        x[j, : len(b)] = b
    return x.to(device)


def _predict(model: nn.Module, bags, batch: int, binary: bool, device: str) -> np.ndarray:
    out = []
    with torch.no_grad():
        for s in range(0, len(bags), batch):
            logits = model(pad_bags(bags, range(s, min(s + batch, len(bags))), device))
            out.append((logits[:, 0] > 0).long() if binary else logits.argmax(1))
    return torch.cat(out).cpu().numpy()


def _check_bags(bags: list[np.ndarray], protocol: MilProtocol, n_classes: int) -> None:
    longest = max(len(b) for b in bags)
    if longest > protocol.pad_size or min(len(b) for b in bags) == 0:
        raise DatasetLayoutError(f"ABMIL ({protocol.task}): bags need 1 to pad_size={protocol.pad_size} tiles (eva's sampler "
                                 f"caps a slide at pad_size), got {min(len(b) for b in bags)} to {longest}")
    if protocol.binary and n_classes != 2:
        raise DatasetLayoutError(f"ABMIL ({protocol.task}) is a binary task (one logit), but the set has {n_classes} classes")


def fit_abmil(train_bags: list[np.ndarray], train_y, val_bags, val_y, test_bags, test_y, protocol: MilProtocol,
              seed: int, n_classes: int, device: str = "cpu") -> MilFit:
    """Train on bags (each (n_tiles, D)); score the test bags with the best-validation epoch's weights."""
    _check_bags(list(train_bags) + list(val_bags) + list(test_bags), protocol, n_classes)
    small = device == "cpu" and sum(b.size for b in train_bags) < SMALL_PROBLEM_NUMEL
    with cpu_threads(1 if small else torch.get_num_threads()):
        return _fit_abmil(train_bags, train_y, val_bags, val_y, test_bags, test_y, protocol, seed, n_classes, device)


def _fit_abmil(train_bags, train_y, val_bags, val_y, test_bags, test_y, protocol: MilProtocol, seed: int, n_classes: int,
               device: str) -> MilFit:
    if protocol.standardise:
        tiles = np.concatenate(train_bags)
        mu, sd = tiles.mean(0), np.maximum(tiles.std(0), 1e-6)
        train_bags, val_bags, test_bags = ([(b - mu) / sd for b in bags] for bags in (train_bags, val_bags, test_bags))
    torch.manual_seed(seed)  # eva builds the head from the global RNG
    model = build_abmil(train_bags[0].shape[1], 1 if protocol.binary else n_classes).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=protocol.lr, weight_decay=protocol.weight_decay, betas=(0.9, 0.999))
    ty = torch.as_tensor(np.asarray(train_y), device=device)
    if protocol.binary:
        loss_of = lambda idx: nn.functional.binary_cross_entropy_with_logits(  # noqa: E731
            model(pad_bags(train_bags, idx.tolist(), device))[:, 0], ty[idx].float())
    else:
        loss_of = lambda idx: nn.functional.cross_entropy(model(pad_bags(train_bags, idx.tolist(), device)), ty[idx].long())  # noqa: E731
    predict = lambda bags: _predict(model, bags, protocol.batch_size, protocol.binary, device)  # noqa: E731
    loop = train_epochs(model, opt, len(train_bags), protocol.batch_size, loss_of,
                        lambda: balanced_accuracy(val_y, predict(val_bags)), protocol.patience,
                        torch.Generator().manual_seed(seed), max_epochs=protocol.max_epochs,
                        scheduler=torch.optim.lr_scheduler.ConstantLR(opt))  # HeadModule's default, stepped per epoch
    pred = predict(test_bags)
    return MilFit(pred, balanced_accuracy(test_y, pred), loop.best_epoch, loop.epochs, loop.val_history)
