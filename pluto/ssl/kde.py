"""KDE regulariser, Midnight's replacement for KoLeo ("more stable", Midnight §2, after Virchow2).

Midnight cites Wang & Isola 2020 for it: the log of a Gaussian-kernel density estimate over all
pairs of L2-normalised embeddings, log mean_{i != j} exp(-t ||x_i - x_j||^2), t = 2 (their
uniformity loss). Minimising it spreads embeddings over the sphere; unlike KoLeo it uses every
pair, so one near-duplicate pair cannot produce a log(0) spike.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def kde_loss(x: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """(B, D) embeddings -> scalar fp32; 0 for a batch of one."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        n = x.shape[0]
        if n < 2:
            return torch.zeros((), device=x.device)
        x = F.normalize(x.float(), dim=-1)
        sq_dist = (2 - 2 * (x @ x.t())).clamp_min(0)
        off_diag = ~torch.eye(n, dtype=torch.bool, device=x.device)
        return torch.logsumexp(-t * sq_dist[off_diag], dim=0) - math.log(n * (n - 1))
