"""Collapse monitors for DINO/iBOT pretraining, and the verdict a run is tagged with.

A DINO teacher can fail in two opposite ways (Caron et al. 2021, §5.3): every image onto one
prototype (the entropy of the batch-mean teacher distribution -> 0), or every image onto the
uniform distribution (each image's teacher distribution carries no information: its KL to
uniform -> 0, its entropy -> ln K). The CLS embedding can also shrink to a few directions: its
effective rank (Roy & Vetterli 2007, the RankMe monitor of Garrido et al. 2023) drops to ~1.
All monitors are detached, computed on the teacher's side of one step in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

# A teacher distribution within 0.1 nats of uniform says almost nothing about the image
# (a healthy DINO teacher at T = 0.04-0.07 sits several nats away).
UNIFORM_KL_NATS = 0.1
# The batch-mean teacher distribution over fewer than two effective prototypes: one-prototype collapse.
ONE_PROTOTYPE_ENTROPY = math.log(2)
# CLS spread below a tenth of the ~1/sqrt(D) of embeddings spread over the sphere.
CLS_STD_FLOOR = 0.1


@torch.no_grad()
def collapse_monitors(
    t_cls: torch.Tensor, t_logits: torch.Tensor, teacher_temp: float, center: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Teacher CLS (B, D) and DINO-head logits (B, K) of one step -> scalar monitors.

    teacher_entropy: entropy of the batch-mean softmax (-> 0 on one-prototype collapse);
    teacher_kl_uniform: mean KL(softmax || uniform) per image (-> 0 on uniform collapse);
    cls_std: std over the batch of the L2-normalised CLS, mean over dims (-> 0 on collapse);
    cls_rank: effective rank of the normalised CLS batch (exp of the entropy of its normalised
    singular values); center_norm: the softmax centre's norm, when a centre is used.
    """
    with torch.autocast(device_type=t_cls.device.type, enabled=False):
        log_p = torch.log_softmax(t_logits.float() / teacher_temp, dim=-1)
        p = log_p.exp()
        mean_p = p.mean(dim=0)
        entropy = -(mean_p * torch.log(mean_p.clamp_min(1e-12))).sum()
        kl_uniform = (p * log_p).sum(dim=-1).mean() + math.log(p.shape[-1])
        z = nn.functional.normalize(t_cls.float(), dim=-1)
        sv = torch.linalg.svdvals(z)
        q = sv / sv.sum().clamp_min(1e-12)
        rank = torch.exp(-(q * torch.log(q.clamp_min(1e-12))).sum())
        out = {"teacher_entropy": entropy, "teacher_kl_uniform": kl_uniform, "cls_std": z.std(dim=0).mean(), "cls_rank": rank}
        if center is not None:
            out["center_norm"] = center.float().norm()
    return out


def collapse_verdict(history: Sequence[dict[str, float]], embed_dim: int, window: int | None = None) -> str | None:
    """"uniform", "one-prototype", "cls-spread" or None, from the means of the last `window` steps
    (default: the last tenth of the history, at least 10 steps; None while fewer are logged)."""
    window = window or max(10, len(history) // 10)
    recent = [h for h in history[-window:] if "teacher_kl_uniform" in h]
    if len(recent) < window:
        return None

    def mean(key: str) -> float:
        return sum(h[key] for h in recent) / len(recent)

    if mean("teacher_kl_uniform") < UNIFORM_KL_NATS:
        return "uniform"
    if mean("teacher_entropy") < ONE_PROTOTYPE_ENTROPY:
        return "one-prototype"
    if mean("cls_std") < CLS_STD_FLOOR / math.sqrt(embed_dim):
        return "cls-spread"
    return None
