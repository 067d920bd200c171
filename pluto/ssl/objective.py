"""DinoV2Objective: student and EMA teacher with DINO/iBOT heads, and the loss of one step.

Layout as DINOv2's `SSLMetaArch`: `student` and `teacher` are ModuleDicts with the same keys
(backbone, dino_head[, ibot_head]), so the EMA update is a zip over their parameters. The teacher
starts as a copy of the student, never requires grad and stays in eval mode. A loss term is on
when its weight in SSLConfig is > 0. Heads run under whatever autocast the caller set (bf16 on
GPU); centering and every loss run in float32 (PLUTO-4 §3.2).

Batch (from `collate_multicrop`): global crops crop-major (n_global * B, 3, G, G), local crops
(n_local * B, 3, L, L), and `masks_p{p}` (n_global * B, N_p) for the step's patch size p. The
teacher sees the unmasked global crops; the student sees masked global crops and the local crops.
"""

from __future__ import annotations

import torch
from torch import nn

from pluto.errors import PlutoError
from pluto.ssl.centering import TeacherTargets
from pluto.ssl.collapse import collapse_monitors
from pluto.ssl.config import SSLConfig
from pluto.ssl.dino_loss import DINOLoss
from pluto.ssl.heads import DINOHead
from pluto.ssl.ibot_loss import IBOTPatchLoss
from pluto.ssl.kde import kde_loss
from pluto.ssl.koleo import koleo_loss


def _heads(embed_dim: int, cfg: SSLConfig) -> dict[str, nn.Module]:
    dims = dict(hidden_dim=cfg.head_hidden_dim, bottleneck_dim=cfg.head_bottleneck_dim, n_layers=cfg.head_n_layers)
    heads: dict[str, nn.Module] = {"dino_head": DINOHead(embed_dim, cfg.n_prototypes, **dims)}
    if cfg.ibot_separate_head:
        heads["ibot_head"] = DINOHead(embed_dim, cfg.ibot_n_prototypes, **{**dims, "bottleneck_dim": cfg.ibot_head_bottleneck_dim or cfg.head_bottleneck_dim})
    return heads


class DinoV2Objective(nn.Module):
    """forward(batch, teacher_temp, patch_size) -> flat dict of fp32 scalars; "loss" is the weighted sum.

    Keys: "loss", the unweighted terms that are on ("dino", "ibot", "koleo", "kde") and the
    detached collapse monitors of `pluto.ssl.collapse.collapse_monitors`.
    """

    def __init__(self, student_backbone: nn.Module, teacher_backbone: nn.Module, cfg: SSLConfig) -> None:
        super().__init__()
        self.cfg = cfg
        embed_dim = student_backbone.embed_dim
        self.num_prefix_tokens = student_backbone.num_prefix_tokens
        self.student = nn.ModuleDict({"backbone": student_backbone, **_heads(embed_dim, cfg)})
        self.teacher = nn.ModuleDict({"backbone": teacher_backbone, **_heads(embed_dim, cfg)})
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.dino_loss = DINOLoss(cfg.student_temp)
        self.ibot_loss = IBOTPatchLoss(cfg.student_temp)
        self.dino_targets = TeacherTargets(cfg.centering, cfg.n_prototypes, cfg.sinkhorn_iters, cfg.center_momentum)
        n_ibot = cfg.ibot_n_prototypes if cfg.ibot_separate_head else cfg.n_prototypes
        self.ibot_targets = TeacherTargets(cfg.centering, n_ibot, cfg.sinkhorn_iters, cfg.center_momentum)

    def train(self, mode: bool = True) -> DinoV2Objective:
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """Once per optimizer step: teacher <- momentum * teacher + (1 - momentum) * student, parameter
        by parameter, and the softmax centres' EMA over the step's micro-batches (pluto.ssl.centering)."""
        t_params = list(self.teacher.parameters())
        s_params = [p.detach() for p in self.student.parameters()]
        torch._foreach_lerp_(t_params, s_params, 1.0 - float(momentum))
        self.dino_targets.update()
        self.ibot_targets.update()

    def discard_step(self) -> None:
        """Forget the centre statistics of a step that is skipped (non-finite loss or gradient)."""
        self.dino_targets.discard()
        self.ibot_targets.discard()

    def _ibot_head(self, tower: nn.ModuleDict) -> nn.Module:
        return tower["ibot_head"] if self.cfg.ibot_separate_head else tower["dino_head"]

    def forward(
        self, batch: dict[str, torch.Tensor], teacher_temp: float, patch_size: int | None = None
    ) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        p = int(patch_size or self.student["backbone"].patch_size)
        global_crops, local_crops = batch["global_crops"], batch.get("local_crops")
        n_g = cfg.n_global_crops
        use_dino, use_ibot = cfg.dino_weight > 0, cfg.ibot_weight > 0
        masks = self._masks(batch, p) if use_ibot else None
        pfx = self.num_prefix_tokens

        with torch.no_grad():
            t_tokens = self.teacher["backbone"].forward_features(global_crops, patch_size=p)
            t_cls = t_tokens[:, 0]
            t_logits = self.teacher["dino_head"](t_cls)
            t_dino = self.dino_targets(t_logits, teacher_temp).unflatten(0, (n_g, -1)) if use_dino else None
            if use_ibot:
                t_patch_logits = self._ibot_head(self.teacher)(t_tokens[:, pfx:][masks])
                t_ibot = self.ibot_targets(t_patch_logits, teacher_temp)

        s_global = self.student["backbone"].forward_features(global_crops, patch_size=p, masks=masks)
        s_cls_global = s_global[:, 0]
        s_masked = s_global[:, pfx:][masks] if use_ibot else None
        s_cls_local = None
        if use_dino and local_crops is not None and cfg.n_local_crops > 0:
            s_cls_local = self.student["backbone"].forward_features(local_crops, patch_size=p)[:, 0]

        losses: dict[str, torch.Tensor] = {}
        shared_ibot = use_ibot and not cfg.ibot_separate_head
        s_patch_logits = None
        if use_dino:
            inputs = [s_cls_global] + ([s_cls_local] if s_cls_local is not None else [])
            if shared_ibot:
                inputs.append(s_masked)
            parts = self.student["dino_head"](torch.cat(inputs)).split([x.shape[0] for x in inputs])
            s_local_logits = parts[1].unflatten(0, (cfg.n_local_crops, -1)) if s_cls_local is not None else None
            losses["dino"] = self.dino_loss(parts[0].unflatten(0, (n_g, -1)), s_local_logits, t_dino)
            s_patch_logits = parts[-1] if shared_ibot else None
        if use_ibot:
            if s_patch_logits is None:
                s_patch_logits = self._ibot_head(self.student)(s_masked)
            losses["ibot"] = self.ibot_loss(s_patch_logits, t_ibot, masks)
        if cfg.koleo_weight > 0:
            losses["koleo"] = sum(koleo_loss(c) for c in s_cls_global.chunk(n_g))
        if cfg.kde_weight > 0:
            losses["kde"] = sum(kde_loss(c, cfg.kde_t) for c in s_cls_global.chunk(n_g))
        weights = {"dino": cfg.dino_weight, "ibot": cfg.ibot_weight, "koleo": cfg.koleo_weight, "kde": cfg.kde_weight}
        total = sum(weights[k] * v for k, v in losses.items())
        out = {"loss": total, **losses}
        center = self.dino_targets.softmax_center.center if self.dino_targets.softmax_center is not None else None
        out.update(collapse_monitors(t_cls, t_logits, teacher_temp, center))
        return out

    def _masks(self, batch: dict[str, torch.Tensor], patch_size: int) -> torch.Tensor:
        key = f"masks_p{patch_size}"
        if key not in batch:
            have = sorted(k for k in batch if k.startswith("masks_p"))
            raise PlutoError(f"batch has no iBOT masks for patch size {patch_size} ({key}); it has {have}")
        return batch[key].to(device=batch["global_crops"].device, dtype=torch.bool)
