"""DINO CLS-token loss: cross-entropy between centred teacher targets and student softmax.

For every (student view, teacher view) pair that are different crops, the per-image loss is
-sum_k p_t[k] log softmax(s / student_temp)[k] (student_temp 0.1, DINOv2); the result is the mean
over images and over pairs. With 2 global and 8 local crops that is 2 global-global pairs plus
16 local-global pairs, DINOv2's normalisation by n_global_terms + n_local_terms.
"""

from __future__ import annotations

import torch
from torch import nn


class DINOLoss(nn.Module):
    def __init__(self, student_temp: float = 0.1) -> None:
        super().__init__()
        self.student_temp = student_temp

    def forward(
        self, student_global: torch.Tensor, student_local: torch.Tensor | None, teacher_probs: torch.Tensor
    ) -> torch.Tensor:
        """Student logits (n_global, B, K) and (n_local, B, K) or None; teacher targets (n_global, B, K) -> scalar fp32.

        Student global view i is paired with every teacher view j != i; local views with all.
        """
        with torch.autocast(device_type=teacher_probs.device.type, enabled=False):
            t = teacher_probs.float()
            n_global, batch = t.shape[:2]
            total = torch.zeros((), device=t.device)
            n_pairs = 0
            for student, skip_same in ((student_global, True), (student_local, False)):
                if student is None or student.shape[0] == 0:
                    continue
                log_p = torch.log_softmax(student.float() / self.student_temp, dim=-1)
                ce = -torch.einsum("sbk,tbk->st", log_p, t) / batch  # (n_student, n_teacher) mean CE per pair
                if skip_same:
                    ce = ce - torch.diag_embed(torch.diagonal(ce))
                    n_pairs += n_global * (n_global - 1)
                else:
                    n_pairs += student.shape[0] * n_global
                total = total + ce.sum()
            return total / n_pairs
