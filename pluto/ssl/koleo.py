"""KoLeo regulariser (Sablayrolles et al. 2019; DINOv2 weight 0.1): spread embeddings apart.

Kozachenko-Leonenko entropy estimate on L2-normalised embeddings: -mean_i log(d_i + eps) with
d_i the distance from x_i to its nearest other sample. Computed in float32; a batch of one has no
neighbour and gives 0 (DINOv2 users hit NaN there, dinov2#143).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(B, D) embeddings -> scalar."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        if x.shape[0] < 2:
            return torch.zeros((), device=x.device)
        x = F.normalize(x.float(), dim=-1, eps=eps)
        with torch.no_grad():
            sims = x @ x.t()
            sims.fill_diagonal_(-2.0)
            nearest = sims.argmax(dim=1)
        dist = F.pairwise_distance(x, x[nearest], eps=eps)
        return -torch.log(dist + eps).mean()
