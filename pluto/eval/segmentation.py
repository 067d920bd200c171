"""EVA's semantic segmentation task: frozen patch-token grid -> ConvDecoderWithImage -> dice without background.

Decoder as eva's `ConvDecoderWithImage` (`eva/vision/models/networks/decoders/segmentation/semantic/with_image.py`,
used by PLUTO-4 §4.2 for CoNSeP and MoNuSAC): upsample the token grid x2 + conv-BN-ReLU (64),
resize to the image, concatenate the RGB image, two conv-BN-ReLU blocks (32, 32), 1x1 conv to the
classes. Metric: dice over the foreground classes (Midnight Table 2, "dice score (no background)").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pluto.eval.metrics import dice_without_background


@dataclass(frozen=True)
class SegProtocol:
    name: str
    steps: int
    lr: float
    batch_size: int
    n_seeds: int


EVA_SEG = SegProtocol("eva", steps=2000, lr=2e-3, batch_size=64, n_seeds=5)
QUICK_SEG = SegProtocol("quick", steps=60, lr=5e-3, batch_size=8, n_seeds=2)


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ConvDecoderWithImage(nn.Module):
    def __init__(self, in_dim: int, n_classes: int, hidden: tuple[int, int, int] = (64, 32, 32)) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Upsample(scale_factor=2), _conv_bn_relu(in_dim, hidden[0]))
        self.image_block = nn.Sequential(_conv_bn_relu(hidden[0] + 3, hidden[1]), _conv_bn_relu(hidden[1], hidden[2]))
        self.classifier = nn.Conv2d(hidden[2], n_classes, 1)

    def forward(self, tokens: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """tokens (B, D, h, w), images (B, 3, H, W) normalised -> logits (B, C, H, W)."""
        f = nn.functional.interpolate(self.features(tokens), size=images.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.image_block(torch.cat([f, images], dim=1)))


def fit_segmentation(train_tokens, train_images, train_masks, test_tokens, test_images, test_masks,
                     n_classes: int, protocol: SegProtocol, seed: int) -> float:
    """Train the decoder on frozen tokens (N, D, h, w) + images (N, 3, H, W) -> test dice without background."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    f = lambda a, dt=torch.float32: torch.as_tensor(np.asarray(a), dtype=dt)  # noqa: E731
    tt, ti, tm = f(train_tokens), f(train_images), f(train_masks, torch.long)
    dec = ConvDecoderWithImage(tt.shape[1], n_classes)
    opt = torch.optim.AdamW(dec.parameters(), lr=protocol.lr)
    for _ in range(protocol.steps):
        idx = torch.randint(0, len(tt), (min(protocol.batch_size, len(tt)),), generator=gen)
        loss = nn.functional.cross_entropy(dec(tt[idx], ti[idx]), tm[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    dec.eval()
    with torch.no_grad():
        pred = dec(f(test_tokens), f(test_images)).argmax(1)
    return dice_without_background(pred, f(test_masks, torch.long), n_classes)
