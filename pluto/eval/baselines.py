"""Baselines every encoder must beat (issue 6): mean-RGB colour features and a random-initialised twin.

Colour alone separates many tissue classes (fat is white, lymphocytes dark purple), so an encoder
that does not beat mean RGB has learned nothing beyond stain. A random-initialised encoder of the
same architecture measures what the architecture gives for free (Midnight Table 2, "vitg14 (initial)").
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from pluto.errors import PlutoError

RANDOM_INIT_SEED = 0


def mean_rgb_features(dataset: Dataset) -> np.ndarray:
    """(N, 3) per-channel mean intensity in [0, 1] of each (uint8 CHW) item."""
    return np.stack([dataset[i].float().mean(dim=(1, 2)).numpy() / 255.0 for i in range(len(dataset))]).astype(np.float32)


def random_init_twin(model: nn.Module, seed: int = RANDOM_INIT_SEED) -> nn.Module:
    """Same architecture and pretrained_cfg, every parameter re-drawn on the CPU generator under `seed`:
    torch's per-layer defaults first, then the model's own scheme on top (timm's `init_weights`, PLUTO's
    `_init_weights`), as at construction. On the CPU so the twin is the same whatever device `model` is
    on; the caller's RNG state is left as it was. Parameters are NaN-filled first, so one that no
    initialiser covers is an error instead of a trained value carried over into the "random" baseline."""
    twin = copy.deepcopy(model).cpu()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        for p in twin.parameters():
            p.fill_(float("nan"))
        torch.default_generator.manual_seed(seed)
        for m in twin.modules():
            if m is not twin and callable(getattr(m, "reset_parameters", None)):
                m.reset_parameters()
        own = getattr(twin, "init_weights", None) or getattr(twin, "_init_weights", None)
        if callable(own):
            own()
    left = [name for name, p in twin.named_parameters() if torch.isnan(p).any()]
    if left:
        raise PlutoError(f"random-init twin of {type(model).__name__}: no initialiser re-draws {left}")
    return twin
