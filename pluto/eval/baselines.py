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

RANDOM_INIT_SEED = 0


def mean_rgb_features(dataset: Dataset) -> np.ndarray:
    """(N, 3) per-channel mean intensity in [0, 1] of each (uint8 CHW) item."""
    return np.stack([dataset[i].float().mean(dim=(1, 2)).numpy() / 255.0 for i in range(len(dataset))]).astype(np.float32)


def random_init_twin(model: nn.Module, seed: int = RANDOM_INIT_SEED) -> nn.Module:
    """Same architecture, weights re-drawn by the model's own initialisers under a fixed seed."""
    twin = copy.deepcopy(model)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        init = getattr(twin, "init_weights", None) or getattr(twin, "_init_weights", None)
        if callable(init):
            init()
        for m in twin.modules():
            if hasattr(m, "reset_parameters") and m is not twin:
                m.reset_parameters()
    finally:
        torch.random.set_rng_state(gen_state)
    return twin
