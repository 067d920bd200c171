"""DINOv2-style self-supervised objective for pathology (PLUTO-4 recipe, Midnight options).

Importable with torch, timm (and its torchvision) and numpy only; configured by the frozen
dataclass `SSLConfig`.
"""

from pluto.lazy_exports import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    **dict.fromkeys(["SoftmaxCenter", "TeacherTargets", "sinkhorn_knopp"], "centering"),
    **dict.fromkeys(["collapse_monitors", "collapse_verdict"], "collapse"),
    **dict.fromkeys(["SSLConfig", "ssl_preset"], "config"),
    **dict.fromkeys(["DINOLoss"], "dino_loss"),
    **dict.fromkeys(["DINOHead"], "heads"),
    **dict.fromkeys(["hed_jitter", "sample_hed_factors"], "hed"),
    **dict.fromkeys(["IBOTPatchLoss"], "ibot_loss"),
    **dict.fromkeys(["kde_loss"], "kde"),
    **dict.fromkeys(["koleo_loss"], "koleo"),
    **dict.fromkeys(["block_mask", "sample_masks"], "masking"),
    **dict.fromkeys(["MultiCropAugment", "collate_multicrop", "sample_crop_box"], "multicrop"),
    **dict.fromkeys(["DinoV2Objective"], "objective"),
    **dict.fromkeys(["apply_schedules", "cancel_last_layer_grads", "param_groups"], "optim"),
    **dict.fromkeys(["Schedules", "build_schedules", "cosine_schedule", "peak_lr", "sample_patch_size", "warmup_cosine"], "schedules"),
    **dict.fromkeys(["batch_to", "train_step", "train_steps"], "step_loop"),
})
