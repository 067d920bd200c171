"""eva 0.4.5's semantic segmentation task (consep.yaml, monusac.yaml) on a frozen encoder's patch-token grid.

Decoder: eva's `ConvDecoderMS` (`eva.vision.models.networks.decoders.segmentation`, imported lazily),
the decoder eva 0.4.5's configs name: upsample x2, 3x3 conv to 64, upsample x2, 3x3 conv to the
classes, bilinear resize to the mask. It sees the tokens only (the configs take the last block's
tokens, `out_indices: 1`). PLUTO-4 §4.2 reports CoNSeP/MoNuSAC with `ConvDecoderWithImage`, which
also concatenates the RGB image, so PLUTO-4's published dice is not this protocol's number.

Training as eva's `SemanticSegmentationModule` under its Trainer (eva_loop.py): AdamW lr 2e-3
(torch's default weight decay 0.01), batch 64, eva's `DiceLoss(softmax=True, batch=True)` (MoNuSAC:
`ignore_index=5`, "Ambiguous": its pixels give no gradient), validation each epoch, the best
epoch on val `MonaiDiceScore` with patience (CoNSeP 200, MoNuSAC 100), at most 2,000 steps, 5 runs.
The score is that same metric on the scored split: eva's MONAI dice over the foreground classes
with empty classes skipped (`MulticlassSegmentationMetrics`' "MonaiDiceScore", the metric eva's
leaderboard, PLUTO-4 and Midnight report), see metrics.py. MoNuSAC's config validates on its test
split (it has no val split), so its checkpoint is chosen on the split it is scored on, as eva does.
Seeding as ABMIL (abmil.py): run `seed` builds the decoder under `torch.manual_seed(seed)` and
shuffles with a generator seeded `seed`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from pluto.eval.eva_loop import train_epochs
from pluto.eval.eva_protocol import EVA_TASKS
from pluto.eval.labeled import DatasetLayoutError
from pluto.eval.metrics import dice_without_background
from pluto.eval.threads import SMALL_PROBLEM_NUMEL, cpu_threads


@dataclass(frozen=True)
class SegProtocol:
    name: str  # preset: "eva" | "quick"
    task: str  # the EVA_TASKS entry the constants come from
    max_steps: int
    patience: int  # validation checks (epochs) without a higher val dice before stopping
    lr: float
    weight_decay: float
    batch_size: int
    n_seeds: int
    n_classes: int  # decoder outputs
    ignore_index: int | None = None  # label left out of loss and metric (MoNuSAC "Ambiguous")

    @property
    def label_classes(self) -> int:
        """Classes in the masks (eva's metrics: MoNuSAC's 5 outputs + the ignored "Ambiguous" = 6)."""
        return max(self.n_classes, (self.ignore_index or 0) + 1)


# The quick preset (tests, demo): fewer steps and runs, a smaller batch; the same loss, loop, selection and metric.
QUICK_SEG = dict(max_steps=30, patience=10, lr=5e-3, batch_size=8, n_seeds=2)
SEG_PRESETS = ("eva", "quick")


def seg_protocol(preset: str, dataset: str) -> SegProtocol:
    """The segmentation protocol of an eva segmentation dataset (consep, monusac) under a preset."""
    eva = EVA_TASKS.get(dataset)
    if eva is None or eva.head != "segmentation":
        raise DatasetLayoutError(f"protocol segmentation needs an eva segmentation set "
                                 f"({sorted(k for k, t in EVA_TASKS.items() if t.head == 'segmentation')}), not {dataset!r}")
    if preset not in SEG_PRESETS:
        raise DatasetLayoutError(f"eval.preset {preset!r} has no segmentation protocol; one of {list(SEG_PRESETS)}")
    base = SegProtocol("eva", dataset, eva.max_steps, eva.patience, eva.lr, eva.weight_decay, eva.batch_size, eva.n_runs,
                       eva.out_features, eva.ignore_index)
    return base if preset == "eva" else replace(base, name="quick", **QUICK_SEG)


@dataclass(frozen=True)
class SegFit:
    test_dice: float
    best_epoch: int
    epochs: int
    steps: int
    val_history: tuple[float, ...]


def build_decoder(in_dim: int, n_classes: int) -> nn.Module:
    try:
        from eva.vision.models.networks.decoders.segmentation import ConvDecoderMS
    except ImportError as exc:
        raise ImportError(f"segmentation uses kaiko-eva's decoder: pip install 'kaiko-eva[vision]' ({exc})") from exc
    return ConvDecoderMS(in_features=in_dim, num_classes=n_classes)


def dice_loss(ignore_index: int | None) -> nn.Module:
    """eva's `DiceLoss(softmax=True, batch=True)` as the configs set it (MONAI's, on class-index targets)."""
    from eva.vision.losses import DiceLoss

    return DiceLoss(softmax=True, batch=True, ignore_index=ignore_index)


def decode(decoder: nn.Module, tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """tokens (B, D, h, w) -> logits (B, C, *size), through eva's DecoderInputs (no image: ConvDecoderMS)."""
    from eva.vision.models.networks.decoders.segmentation.typings import DecoderInputs

    return decoder(DecoderInputs([tokens], size, None))


def fit_segmentation(train_tokens, train_masks, val_tokens, val_masks, test_tokens, test_masks, protocol: SegProtocol,
                     seed: int, device: str = "cpu") -> SegFit:
    """Train the decoder on frozen tokens (N, D, h, w) and masks (N, H, W); test dice with the best-validation weights."""
    small = device == "cpu" and np.asarray(train_tokens).size < SMALL_PROBLEM_NUMEL
    with cpu_threads(1 if small else torch.get_num_threads()):
        return _fit_segmentation(train_tokens, train_masks, val_tokens, val_masks, test_tokens, test_masks, protocol, seed, device)


def _fit_segmentation(train_tokens, train_masks, val_tokens, val_masks, test_tokens, test_masks, protocol: SegProtocol,
                      seed: int, device: str) -> SegFit:
    f = lambda a, dt=torch.float32: torch.as_tensor(np.asarray(a), dtype=dt)  # noqa: E731
    tt, tm = f(train_tokens), f(train_masks, torch.long)
    size = tuple(tm.shape[-2:])
    torch.manual_seed(seed)  # eva builds the decoder from the global RNG
    dec = build_decoder(tt.shape[1], protocol.n_classes).to(device)
    opt = torch.optim.AdamW(dec.parameters(), lr=protocol.lr, weight_decay=protocol.weight_decay)
    criterion = dice_loss(protocol.ignore_index)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        return criterion(decode(dec, tt[idx].to(device), size), tm[idx].to(device))

    def score(tokens, masks) -> float:
        tokens, masks = f(tokens), f(masks, torch.long)
        pred = torch.cat([decode(dec, tokens[s : s + protocol.batch_size].to(device), size).argmax(1).cpu()
                          for s in range(0, len(tokens), protocol.batch_size)])
        return dice_without_background(pred, masks, protocol.label_classes, protocol.ignore_index)

    loop = train_epochs(dec, opt, len(tt), protocol.batch_size, batch_loss, lambda: score(val_tokens, val_masks),
                        protocol.patience, torch.Generator().manual_seed(seed), max_steps=protocol.max_steps,
                        scheduler=torch.optim.lr_scheduler.ConstantLR(opt))  # SemanticSegmentationModule's default, per epoch
    with torch.no_grad():
        test = score(test_tokens, test_masks)
    return SegFit(test, loop.best_epoch, loop.epochs, loop.steps, loop.val_history)
