"""iBOT masked-patch loss: the student predicts the teacher's targets at masked patch tokens only.

Inputs are already restricted to the masked tokens (M = masks.sum()), in the row-major order of
`tokens[masks]`. As DINOv2's `iBOTPatchLoss.forward_masked`, each token's cross-entropy is
weighted by 1 / (masked tokens in its image), so every masked image weighs the same whatever its
mask ratio, and the sum is divided by the number of images in the batch (masked or not).
"""

from __future__ import annotations

import torch
from torch import nn


class IBOTPatchLoss(nn.Module):
    def __init__(self, student_temp: float = 0.1) -> None:
        super().__init__()
        self.student_temp = student_temp

    def forward(self, student_logits: torch.Tensor, teacher_probs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """(M, K) student logits, (M, K) teacher targets, (B, N) bool masks -> scalar fp32."""
        with torch.autocast(device_type=teacher_probs.device.type, enabled=False):
            log_p = torch.log_softmax(student_logits.float() / self.student_temp, dim=-1)
            ce = -(teacher_probs.float() * log_p).sum(dim=-1)
            per_image = masks.sum(dim=-1, keepdim=True).clamp_min(1).float()
            weights = (1.0 / per_image).expand_as(masks)[masks]
            return (ce * weights).sum() / masks.shape[0]
