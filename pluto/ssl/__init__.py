"""DINOv2-style self-supervised objective for pathology (PLUTO-4 recipe, Midnight options).

Importable with torch, timm (and its torchvision) and numpy only; configured by the frozen
dataclass `SSLConfig`.
"""

from pluto.ssl.centering import SoftmaxCenter, TeacherTargets, sinkhorn_knopp
from pluto.ssl.config import SSLConfig, ssl_preset
from pluto.ssl.dino_loss import DINOLoss
from pluto.ssl.heads import DINOHead
from pluto.ssl.hed import hed_jitter, sample_hed_factors
from pluto.ssl.ibot_loss import IBOTPatchLoss
from pluto.ssl.kde_loss import kde_loss
from pluto.ssl.koleo_loss import koleo_loss
from pluto.ssl.masking import block_mask, sample_masks
from pluto.ssl.multicrop import MultiCropAugment, collate_multicrop, sample_crop_box
from pluto.ssl.objective import DinoV2Objective
from pluto.ssl.optim import apply_schedules, cancel_last_layer_grads, param_groups
from pluto.ssl.schedules import Schedules, build_schedules, cosine_schedule, peak_lr, sample_patch_size, warmup_cosine
from pluto.ssl.train_steps import batch_to, train_step, train_steps

__all__ = [
    "DINOHead", "DINOLoss", "DinoV2Objective", "IBOTPatchLoss", "MultiCropAugment", "SSLConfig", "Schedules",
    "SoftmaxCenter", "TeacherTargets", "apply_schedules", "batch_to", "block_mask", "build_schedules",
    "cancel_last_layer_grads", "collate_multicrop", "cosine_schedule", "hed_jitter", "kde_loss", "koleo_loss",
    "param_groups", "peak_lr", "sample_crop_box", "sample_hed_factors", "sample_masks", "sample_patch_size",
    "sinkhorn_knopp", "ssl_preset", "train_step", "train_steps", "warmup_cosine",
]
