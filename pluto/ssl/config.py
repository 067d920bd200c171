"""SSLConfig: every knob of the DINOv2-style objective, its augmentations and its schedules.

A plain frozen dataclass (the GPU machine has no pydantic); `pluto.config.Settings` may type a
section as this class so there is one definition. Defaults are DINOv2's
(`dinov2/configs/ssl_default_config.yaml`, Oquab et al. 2023) unless a docstring line says a
paper overrides them: PLUTO-4 (Padigela et al. 2025, §2.5, §3.2) and Midnight (Karasikov et al.
2025, "Training state-of-the-art pathology foundation models with orders of magnitude less data").

Crop rescaling (how crops change the um/px the model sees): a crop takes a square region whose
area is a random fraction `*_crop_scale` of the tile and resizes it (bilinear, antialiased) to
`*_crop_px`. The model therefore sees `tile_mpp * region_side_px / crop_px` um/px, returned per
crop by `MultiCropAugment` as `*_mpp`. Aspect ratio is fixed to 1 (`crop_aspect_ratio`), unlike
DINOv2's (3/4, 4/3), so that one um/px describes a crop (tissue is not stretched anisotropically,
which matters for nuclear size/shape cues). From a 275 px tile at 0.5 um/px a 224 px global crop
covers 0.69-1.23x the tile mpp (0.35-0.61 um/px); 550 px tiles at the same mpp give 0.69-1.23 um/px,
which is how PLUTO-4's mix of 275/550 px tiles (§2.5) widens the scale range.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from pluto.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CENTERINGS = ("sinkhorn", "softmax")


@dataclass(frozen=True)
class SSLConfig:
    """Objective, augmentation and schedule settings; `validate()` runs on construction."""

    # crops (DINOv2: 2 global 224 in (0.32, 1.0) of the area, 8 local 96 in (0.05, 0.32))
    n_global_crops: int = 2
    n_local_crops: int = 8
    global_crop_px: int = 224
    local_crop_px: int = 96
    global_crop_scale: tuple[float, float] = (0.32, 1.0)
    local_crop_scale: tuple[float, float] = (0.05, 0.32)
    crop_aspect_ratio: tuple[float, float] = (1.0, 1.0)
    # photometric (DINOv2 DataAugmentationDINO); HED jitter as Midnight (Tellez et al. 2019, sigma 0.05 "HED-light")
    color_jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)  # global crop 1, global crop 2, local crops
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.2  # second global crop only
    hed_p: float = 1.0
    hed_strength: float = 0.05  # Tellez's sigma in skimage.color.rgb2hed units (pluto.ssl.hed)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # iBOT block masking (DINOv2: half of the global crops masked, ratio in (0.1, 0.5))
    patch_sizes: tuple[int, ...] = (16,)
    mask_probability: float = 0.5
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    mask_min_patches: int = 4
    mask_max_aspect: float = 1 / 0.3
    # heads (DINOv2: 3-layer MLP 2048 hidden, 256 bottleneck, 65536 prototypes)
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_n_layers: int = 3
    n_prototypes: int = 65536
    ibot_separate_head: bool = False
    ibot_n_prototypes: int = 65536
    ibot_head_bottleneck_dim: int | None = None  # separate iBOT head's bottleneck; None: head_bottleneck_dim
    # loss terms: a term is on when its weight is > 0 (Midnight: KDE instead of KoLeo)
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    kde_weight: float = 0.0
    kde_t: float = 2.0  # Wang & Isola 2020 uniformity temperature, cited by Midnight as its KDE regulariser
    student_temp: float = 0.1
    centering: str = "sinkhorn"
    sinkhorn_iters: int = 3
    center_momentum: float = 0.9
    # schedules (fractions of the run; DINOv2 defaults are 10/100 warmup epochs, 30/100 teacher-temp warmup, 1/100 freeze)
    base_lr: float = 4e-3  # scaled by sqrt(global_batch / 1024) (DINOv2 "sqrt_wrt_1024")
    min_lr: float = 1e-6
    warmup_frac: float = 0.1
    weight_decay: float = 0.04  # fixed as in PLUTO-4 §3.2 ...
    weight_decay_end: float | None = None  # ... or a cosine to this value (DINOv2: 0.4)
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    teacher_temp_warmup_frac: float = 0.3
    momentum_teacher: float = 0.992
    final_momentum_teacher: float = 1.0
    layer_decay: float = 0.9
    patch_embed_lr_mult: float = 0.2
    freeze_last_layer_frac: float = 0.01
    clip_grad: float = 3.0  # PLUTO-4 §3.2: global-norm clipping at 3.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the field for combinations that cannot train."""
        problems = []
        for name in ("global_crop_px", "local_crop_px"):
            px = getattr(self, name)
            bad = [p for p in self.patch_sizes if px % p]
            if bad:
                problems.append(f"{name}={px} is not divisible by patch size(s) {bad}")
        for name in ("global_crop_scale", "local_crop_scale", "mask_ratio", "crop_aspect_ratio", "blur_sigma"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                problems.append(f"{name}={getattr(self, name)} must satisfy 0 < low <= high")
        if self.global_crop_scale[1] > 1 or self.local_crop_scale[1] > 1 or self.mask_ratio[1] > 1:
            problems.append("crop scales and mask ratios are fractions <= 1")
        if self.centering not in CENTERINGS:
            problems.append(f"centering={self.centering!r} must be one of {CENTERINGS}")
        if self.n_global_crops < 2 and self.dino_weight > 0:
            problems.append("the DINO loss needs n_global_crops >= 2 (teacher view != student view)")
        if min(self.dino_weight, self.ibot_weight, self.koleo_weight, self.kde_weight) < 0:
            problems.append("loss weights must be >= 0")
        if self.dino_weight <= 0 and self.ibot_weight <= 0:
            problems.append("at least one of dino_weight, ibot_weight must be > 0")
        if problems:
            raise ConfigError("SSLConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SSLConfig:
        return cls(**d)


def ssl_preset(name: str) -> SSLConfig:
    """Named small configs for CPU runs: "demo" (pluto_tiny's recipe, 2 CPU cores) and "tiny".

    demo: 112/48 px crops and 1024 prototypes (issue 4: <= 4k prototypes keeps a step ~0.4 s).
    tiny: the smallest setting that still runs every term: 48/32 px crops, 2 local crops, 256
    prototypes, KDE instead of KoLeo (KoLeo needs a larger per-GPU batch); a pluto_tiny step costs
    ~1 s on one contended CPU core (multi-process and fault tests).
    PLUTO-4S and PLUTO-4G are bound to their architectures with every value cited:
    `pluto.train.recipes.recipe_config("pluto_4s").ssl`.
    """
    presets = {
        "demo": dict(
            global_crop_px=112, local_crop_px=48, head_hidden_dim=256, head_bottleneck_dim=64,
            n_prototypes=1024, ibot_n_prototypes=1024, patch_sizes=(16,), momentum_teacher=0.99,
        ),
        "tiny": dict(
            global_crop_px=48, local_crop_px=32, n_local_crops=2, head_hidden_dim=64, head_bottleneck_dim=32,
            n_prototypes=256, ibot_n_prototypes=256, patch_sizes=(16,), momentum_teacher=0.99, koleo_weight=0.0,
            kde_weight=0.05, warmup_frac=0.25,
        ),
    }
    if name not in presets:
        hint = "; architectures have recipes: pluto.train.recipes.recipe_config(arch)" if name.startswith("pluto_") else ""
        raise ConfigError(f"unknown SSL preset {name!r}; choose one of {sorted(presets)}{hint}")
    return SSLConfig(**presets[name])
