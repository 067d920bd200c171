"""Schedules as numpy arrays indexed by iteration (DINOv2 style: resuming is an index).

lr: linear warmup from 0 to the peak, then cosine to `min_lr` (PLUTO-4 §3.2). Peak =
base_lr * sqrt(global_batch / 1024) (DINOv2's sqrt_wrt_1024 rule). Weight decay: fixed (PLUTO-4:
"AdamW optimizer with a fixed weight decay"), or cosine to `weight_decay_end` as DINOv2. Teacher
temperature: linear warmup 0.04 -> 0.07, then constant (DINOv2). Teacher momentum: cosine 0.992 ->
1.0 over the run (DINOv2; PLUTO-4: "temperature and momentum schedules follow a similar approach
to DINOv2"). The patch size is drawn per step from (step, seed) alone, so every rank draws the
same one without communicating.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pluto.errors import ConfigError
from pluto.ssl.config import SSLConfig


def cosine_schedule(start: float, end: float, n_iters: int) -> np.ndarray:
    """n_iters values from `start` (iteration 0) to `end` (last iteration) along half a cosine."""
    if n_iters <= 0:
        return np.zeros(0)
    if n_iters == 1:
        return np.array([start], dtype=np.float64)
    i = np.arange(n_iters)
    return end + 0.5 * (start - end) * (1 + np.cos(np.pi * i / (n_iters - 1)))


def warmup_cosine(peak: float, end: float, total_iters: int, warmup_iters: int, start: float = 0.0) -> np.ndarray:
    """Linear `start` -> `peak` over warmup_iters (peak not reached until the cosine's first step), then cosine to `end`."""
    warmup = np.linspace(start, peak, warmup_iters, endpoint=False)
    return np.concatenate([warmup, cosine_schedule(peak, end, total_iters - warmup_iters)])


@dataclass(frozen=True)
class Schedules:
    """Per-iteration values; index with the global iteration number."""

    lr: np.ndarray
    weight_decay: np.ndarray
    teacher_temp: np.ndarray
    momentum: np.ndarray
    freeze_last_layer_iters: int

    def __len__(self) -> int:
        return len(self.lr)


def peak_lr(cfg: SSLConfig, global_batch: int) -> float:
    return cfg.base_lr * math.sqrt(global_batch / 1024)


def build_schedules(cfg: SSLConfig, total_iters: int, global_batch: int) -> Schedules:
    if total_iters < 1:
        raise ConfigError(f"total_iters={total_iters}: a run needs at least one iteration")
    warmup = int(round(cfg.warmup_frac * total_iters))
    temp_warmup = int(round(cfg.teacher_temp_warmup_frac * total_iters))
    wd = (
        np.full(total_iters, cfg.weight_decay)
        if cfg.weight_decay_end is None
        else cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, total_iters)
    )
    temp = np.concatenate(
        [
            np.linspace(cfg.warmup_teacher_temp, cfg.teacher_temp, temp_warmup),
            np.full(total_iters - temp_warmup, cfg.teacher_temp),
        ]
    )
    return Schedules(
        lr=warmup_cosine(peak_lr(cfg, global_batch), cfg.min_lr, total_iters, warmup),
        weight_decay=wd,
        teacher_temp=temp,
        momentum=cosine_schedule(cfg.momentum_teacher, cfg.final_momentum_teacher, total_iters),
        freeze_last_layer_iters=int(round(cfg.freeze_last_layer_frac * total_iters)),
    )


def sample_patch_size(step: int, seed: int, sizes: tuple[int, ...]) -> int:
    """Patch size for `step`: uniform over `sizes`, a pure function of (step, seed) (same on all ranks)."""
    if not sizes:
        raise ConfigError("sample_patch_size: no patch sizes given")
    rng = np.random.default_rng([int(seed), int(step)])
    return int(sizes[int(rng.integers(len(sizes)))])
