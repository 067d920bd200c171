"""The single-process SSL step loop: forward, NaN check, backward, clip, freeze, step, EMA.

One optimizer step as CONTRACTS.md fixes it for the trainer: schedules applied for the iteration,
patch size drawn from (iteration, seed), objective forward under autocast (bf16 when `amp_dtype` is
given), a finite-loss check (dinov2 checks NaN every step), backward, global-norm clipping
(PLUTO-4: 3.0), prototype grads zeroed during the last-layer freeze, optimizer step, teacher EMA
with the scheduled momentum. The distributed trainer (pluto.train) wraps this with DDP,
checkpoints and metrics; this loop is what it runs per rank.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

import torch

from pluto.errors import PlutoError
from pluto.ssl.objective import DinoV2Objective
from pluto.ssl.optim import apply_schedules, cancel_last_layer_grads
from pluto.ssl.schedules import Schedules, sample_patch_size

log = logging.getLogger(__name__)


def batch_to(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    """Move every tensor of a collated batch to `device` (non-blocking from pinned memory)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def train_step(
    obj: DinoV2Objective,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    schedules: Schedules,
    it: int,
    *,
    seed: int = 0,
    amp_dtype: torch.dtype | None = None,
    clip_grad: float | None = 3.0,
) -> dict[str, float]:
    """One iteration `it`; returns the losses and monitors as floats plus lr, momentum, patch_size, grad_norm."""
    apply_schedules(optimizer, it, schedules)
    patch_size = sample_patch_size(it, seed, obj.cfg.patch_sizes)
    device = batch["global_crops"].device
    teacher_temp = float(schedules.teacher_temp[it])
    with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        losses = obj(batch, teacher_temp=teacher_temp, patch_size=patch_size)
    values = {k: float(v.detach()) for k, v in losses.items()}
    if not math.isfinite(values["loss"]):
        raise PlutoError(f"non-finite SSL loss at iteration {it} (patch size {patch_size}): {values}")
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    params = [p for p in obj.student.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_grad) if clip_grad else torch.zeros(())
    if it < schedules.freeze_last_layer_iters:
        cancel_last_layer_grads(obj.student)
    optimizer.step()
    momentum = float(schedules.momentum[it])
    obj.update_teacher(momentum)
    values.update(
        it=it, lr=float(schedules.lr[it]), momentum=momentum, teacher_temp=teacher_temp,
        patch_size=patch_size, grad_norm=float(grad_norm),
    )
    return values


def train_steps(
    obj: DinoV2Objective,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[dict[str, torch.Tensor]],
    schedules: Schedules,
    *,
    start_iter: int = 0,
    n_steps: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    clip_grad: float | None = 3.0,
    on_step: Callable[[dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Run iterations start_iter, start_iter + 1, ... over `batches` (until exhausted, n_steps, or the schedule ends)."""
    obj.train()
    history = []
    end = len(schedules) if n_steps is None else min(len(schedules), start_iter + n_steps)
    it = start_iter
    for batch in batches:
        if it >= end:
            break
        values = train_step(
            obj, optimizer, batch_to(batch, device), schedules, it, seed=seed, amp_dtype=amp_dtype, clip_grad=clip_grad
        )
        history.append(values)
        if on_step is not None:
            on_step(values)
        it += 1
    if history:
        log.info("ssl: iterations %d-%d, last loss %.4f", start_iter, it - 1, history[-1]["loss"])
    return history
