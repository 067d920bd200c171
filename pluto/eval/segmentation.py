"""EVA's semantic segmentation task: frozen patch-token grid -> ConvDecoderWithImage -> dice without background.

The decoder is eva's `ConvDecoderWithImage` (`eva.vision.models.networks.decoders.segmentation`,
imported lazily; used by PLUTO-4 §4.2 for CoNSeP and MoNuSAC): upsample the token grid x2 +
conv-BN-ReLU (64), resize to the image, concatenate the RGB image, two conv-BN-ReLU blocks (32, 32),
1x1 conv to the classes. Metric: eva's MONAI dice over the foreground classes (Midnight Table 2,
"dice score (no background)"), see metrics.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pluto.eval.metrics import dice_without_background
from pluto.eval.threads import SMALL_PROBLEM_NUMEL, cpu_threads


@dataclass(frozen=True)
class SegProtocol:
    name: str
    steps: int
    lr: float
    batch_size: int
    n_seeds: int


EVA_SEG = SegProtocol("eva", steps=2000, lr=2e-3, batch_size=64, n_seeds=5)
QUICK_SEG = SegProtocol("quick", steps=30, lr=5e-3, batch_size=8, n_seeds=2)
SEG_PRESETS = {p.name: p for p in (EVA_SEG, QUICK_SEG)}


def build_decoder(in_dim: int, n_classes: int) -> nn.Module:
    try:
        from eva.vision.models.networks.decoders.segmentation import ConvDecoderWithImage
    except ImportError as exc:
        raise ImportError(f"segmentation uses kaiko-eva's decoder: pip install 'kaiko-eva[vision]' ({exc})") from exc
    return ConvDecoderWithImage(in_features=in_dim, num_classes=n_classes)


def decode(decoder: nn.Module, tokens: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """tokens (B, D, h, w), images (B, 3, H, W) normalised -> logits (B, C, H, W), through eva's DecoderInputs."""
    from eva.vision.models.networks.decoders.segmentation.typings import DecoderInputs

    return decoder(DecoderInputs([tokens], tuple(images.shape[-2:]), images))


def fit_segmentation(train_tokens, train_images, train_masks, test_tokens, test_images, test_masks,
                     n_classes: int, protocol: SegProtocol, seed: int) -> float:
    """Train the decoder on frozen tokens (N, D, h, w) + images (N, 3, H, W) -> test dice without background."""
    small = np.asarray(train_images).size < SMALL_PROBLEM_NUMEL
    with cpu_threads(1 if small else torch.get_num_threads()):
        return _fit_segmentation(train_tokens, train_images, train_masks, test_tokens, test_images, test_masks, n_classes, protocol, seed)


def _fit_segmentation(train_tokens, train_images, train_masks, test_tokens, test_images, test_masks,
                      n_classes: int, protocol: SegProtocol, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # layer init draws from the global RNG
    f = lambda a, dt=torch.float32: torch.as_tensor(np.asarray(a), dtype=dt)  # noqa: E731
    tt, ti, tm = f(train_tokens), f(train_images), f(train_masks, torch.long)
    dec = build_decoder(tt.shape[1], n_classes)
    opt = torch.optim.AdamW(dec.parameters(), lr=protocol.lr)
    dec.train()
    for _ in range(protocol.steps):
        idx = torch.randint(0, len(tt), (min(protocol.batch_size, len(tt)),), generator=gen)
        loss = nn.functional.cross_entropy(decode(dec, tt[idx], ti[idx]), tm[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    dec.eval()
    with torch.no_grad():
        pred = decode(dec, f(test_tokens), f(test_images)).argmax(1)
    return dice_without_background(pred, f(test_masks, torch.long), n_classes)
