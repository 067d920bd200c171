"""Teacher centering: Sinkhorn-Knopp (DINOv2 default, SwAV) or softmax with an EMA centre (DINO).

Both run in float32 with autocast off (PLUTO-4 §3.2: "loss computation, momentum center updates
are performed in float32"). Both work across processes: when torch.distributed is initialised the
sums (and the centre's batch mean) are all-reduced over the default group, so every rank sees the
statistics of the global batch; at world size 1 they are local.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce(t: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place sum (or `op`) over all ranks when distributed; identity at world size 1."""
    if _distributed():
        dist.all_reduce(t, op=op)
    return t


def sinkhorn_knopp(logits: torch.Tensor, teacher_temp: float, n_iters: int = 3) -> torch.Tensor:
    """(B, K) teacher logits -> (B, K) targets: rows sum to 1, columns to B_global / K.

    Alternately normalises prototypes (columns) to equal mass 1/K and samples (rows) to mass
    1/B over the global batch (DINOv2 `sinkhorn_knopp_teacher`, 3 iterations), ending on the rows
    so each sample's target is a distribution. The logits are shifted by their global max before
    the exp (the first normalisation divides the shift out). They are cosine similarities from
    `DINOHead`, so after the shift exp() is >= exp(-2 / T) = exp(-50) at T = 0.04, far above fp32
    underflow (~exp(-87)).
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        x = logits.float() / teacher_temp
        x = x - _all_reduce(x.max().detach().clone(), dist.ReduceOp.MAX)
        q = torch.exp(x).t()  # (K, B)
        n_samples = _all_reduce(torch.tensor(float(q.shape[1]), device=q.device))
        n_protos = q.shape[0]
        q = q / _all_reduce(q.sum())
        for _ in range(n_iters):
            q = q / _all_reduce(q.sum(dim=1, keepdim=True)) / n_protos
            q = q / q.sum(dim=0, keepdim=True) / n_samples
        return (q * n_samples).t()


class SoftmaxCenter(nn.Module):
    """DINO centering: softmax((logits - c) / T) with c an EMA (momentum 0.9) of the global batch mean logit.

    The centre moves once per optimizer step, not per forward: `forward` centres with the current
    c and adds the batch's (all-reduced) logit sum and count to a pending total; `update()` folds
    the mean of everything pending since the last update into the EMA. Under gradient
    accumulation every micro-batch of a step is centred with the same c and the EMA sees the mean
    over the whole global batch, as with one big batch. `discard()` drops a skipped step's stats.
    """

    def __init__(self, n_prototypes: int, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, n_prototypes))
        self.register_buffer("pending_sum", torch.zeros(1, n_prototypes), persistent=False)
        self.register_buffer("pending_count", torch.zeros(()), persistent=False)

    @torch.no_grad()
    def forward(self, logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """(B, K) -> centred teacher probabilities (B, K); this batch's statistics wait for `update()`."""
        with torch.autocast(device_type=logits.device.type, enabled=False):
            x = logits.float()
            probs = torch.softmax((x - self.center) / teacher_temp, dim=-1)
            self.pending_sum.add_(_all_reduce(x.sum(dim=0, keepdim=True)))
            self.pending_count.add_(_all_reduce(torch.tensor(float(x.shape[0]), device=x.device)))
        return probs

    @torch.no_grad()
    def update(self) -> None:
        """c <- momentum * c + (1 - momentum) * (mean logit since the last update); no-op when none is pending."""
        if float(self.pending_count) > 0:
            self.center.mul_(self.momentum).add_(self.pending_sum / self.pending_count, alpha=1 - self.momentum)
        self.discard()

    def discard(self) -> None:
        self.pending_sum.zero_()
        self.pending_count.zero_()


class TeacherTargets(nn.Module):
    """Chooses the centering named in SSLConfig.centering; owns the EMA centre when one is used."""

    def __init__(self, centering: str, n_prototypes: int, sinkhorn_iters: int = 3, center_momentum: float = 0.9):
        super().__init__()
        self.centering = centering
        self.sinkhorn_iters = sinkhorn_iters
        self.softmax_center = SoftmaxCenter(n_prototypes, center_momentum) if centering == "softmax" else None

    @torch.no_grad()
    def forward(self, logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        if self.softmax_center is not None:
            return self.softmax_center(logits, teacher_temp)
        return sinkhorn_knopp(logits, teacher_temp, self.sinkhorn_iters)

    def update(self) -> None:
        """Once per optimizer step: move the EMA centre (Sinkhorn-Knopp keeps no state)."""
        if self.softmax_center is not None:
            self.softmax_center.update()

    def discard(self) -> None:
        if self.softmax_center is not None:
            self.softmax_center.discard()
