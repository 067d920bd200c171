"""Each architecture's pretraining recipe, value by value with its source.

Choosing `train.arch` chooses its recipe: `pluto.config.Settings` fills every recipe field the run
does not set from here, and records the fields it does set over the recipe in
`TrainConfig.recipe_overrides` (logged with the run's params). Sources, in order of precedence:
1. PLUTO-4 (Padigela et al. 2025, arXiv:2511.02826; `PLUTO4`), quoted;
2. dinov2's training config for that architecture (facebookresearch/dinov2 `dinov2/configs/train/`:
   `vitg14.yaml` for PLUTO-4G's ViT-g/14; for PLUTO-4S's ViT-S/16 dinov2 ships no ViT-S training
   config and its patch-16 config, `vitl16_short.yaml`, "corresponds to the default config");
3. dinov2's defaults (`dinov2/configs/ssl_default_config.yaml`).
DINOv2 counts schedules in epochs; ours are fractions of the run, so a warm-up of 80 of 500 epochs
is 0.16 (the source then names both keys). `pluto_tiny` is the CPU demo model: its recipe is the
demo's small preset (`pluto.ssl.config.ssl_preset("demo")`, tuned for 2 CPU cores) and the demo's
batch; whatever a recipe leaves out keeps the `SSLConfig` / `TrainConfig` default (dinov2's).
Plain data and functions: importable on the GPU machine (no pydantic).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from pluto.errors import ConfigError
from pluto.ssl.config import SSLConfig, ssl_preset
from pluto.train.config import TrainConfig

PLUTO4 = "PLUTO-4"
DINOV2_DEFAULT = "ssl_default_config.yaml"


@dataclass(frozen=True)
class Cited:
    """One recipe value and where it is stated: `source` is "PLUTO-4 §<section>" (with the `quote`),
    "dinov2 <file> <key>", "dinov2 <file> <key> / [<file>] <key>" (a fraction of epochs), or the demo
    preset. A dinov2 key is cited from the file that sets it: the arch's own config where it does,
    else the defaults (which the arch's config then leaves unchanged)."""

    value: Any
    source: str
    quote: str = ""


def _dinov2(file: str, key: str, value: Any) -> Cited:
    return Cited(value, f"dinov2 {file} {key}")


def _paper(section: str, quote: str, value: Any) -> Cited:
    return Cited(value, f"{PLUTO4} §{section}", quote)


def _dinov2_defaults() -> dict[str, Cited]:
    """What both PLUTO-4 recipes take from dinov2's defaults when neither the paper nor the arch's config says."""
    d = lambda key, value: _dinov2(DINOV2_DEFAULT, key, value)  # noqa: E731
    return {
        "ssl.n_local_crops": d("crops.local_crops_number", 8),
        "ssl.global_crop_px": d("crops.global_crops_size", 224),
        "ssl.local_crop_px": d("crops.local_crops_size", 96),
        "ssl.global_crop_scale": d("crops.global_crops_scale", (0.32, 1.0)),
        "ssl.local_crop_scale": d("crops.local_crops_scale", (0.05, 0.32)),
        "ssl.n_prototypes": d("dino.head_n_prototypes", 65536),
        "ssl.head_bottleneck_dim": d("dino.head_bottleneck_dim", 256),
        "ssl.head_hidden_dim": d("dino.head_hidden_dim", 2048),
        "ssl.head_n_layers": d("dino.head_nlayers", 3),
        "ssl.ibot_separate_head": d("ibot.separate_head", False),
        "ssl.ibot_n_prototypes": d("ibot.head_n_prototypes", 65536),
        "ssl.koleo_weight": d("dino.koleo_loss_weight", 0.1),
        "ssl.mask_probability": d("ibot.mask_sample_probability", 0.5),
        "ssl.mask_ratio": d("ibot.mask_ratio_min_max", (0.1, 0.5)),
        "ssl.centering": d("train.centering", "softmax"),  # dinov2's "centering"; "sinkhorn_knopp" is our "sinkhorn"
        "ssl.teacher_temp": d("teacher.teacher_temp", 0.07),
        "ssl.warmup_teacher_temp": d("teacher.warmup_teacher_temp", 0.04),
        "ssl.teacher_temp_warmup_frac": d("teacher.warmup_teacher_temp_epochs / optim.epochs", 0.3),
        "ssl.momentum_teacher": d("teacher.momentum_teacher", 0.992),
        "ssl.final_momentum_teacher": d("teacher.final_momentum_teacher", 1.0),
        "ssl.base_lr": d("optim.base_lr", 4e-3),
        "ssl.min_lr": d("optim.min_lr", 1e-6),
        "ssl.warmup_frac": d("optim.warmup_epochs / optim.epochs", 0.1),
        "ssl.weight_decay": d("optim.weight_decay", 0.04),
        "ssl.layer_decay": d("optim.layerwise_decay", 0.9),
        "ssl.patch_embed_lr_mult": d("optim.patch_embed_lr_mult", 0.2),
        "ssl.freeze_last_layer_frac": d("optim.freeze_last_layer_epochs / optim.epochs", 0.01),
        "drop_path_rate": d("student.drop_path_rate", 0.3),
        "drop_path_uniform": d("student.drop_path_uniform", True),
        "layerscale": d("student.layerscale", 1e-5),
    }


def _pluto4_common() -> dict[str, Cited]:
    """What PLUTO-4 §3.2 states for both models (it overrides dinov2's cosine weight decay and clipping source)."""
    return {
        "batch_per_gpu": _paper("3.2", "local batch size of 32 tiles per GPU", 32),
        "ssl.weight_decay_end": _paper("3.2", "AdamW optimizer with a fixed weight decay", None),
        "ssl.clip_grad": _paper("3.2", "Gradient clipping is applied at a global norm of 3.0", 3.0),
    }


def _pluto_4s() -> dict[str, Cited]:
    return {
        **_dinov2_defaults(),
        **_pluto4_common(),
        "global_batch": _paper("3.2", "For PLUTO-4S we use an effective batch-size of 1536", 1536),
        "ssl.patch_sizes": _paper("3.1", "patch-token sizes from [8, 16, 32] are sampled dynamically", (8, 16, 32)),
    }


def _pluto_4g() -> dict[str, Cited]:
    g = lambda key, value: _dinov2("vitg14.yaml", key, value)  # noqa: E731
    return {
        **_dinov2_defaults(),
        **_pluto4_common(),
        "global_batch": _paper("3.2", "effective global batch size of 1024 for PLUTO-4G", 1024),
        "ssl.patch_sizes": _paper("3.1", "we train PLUTO-4G using a single patch size (14)", (14,)),
        "ssl.local_crop_px": g("crops.local_crops_size", 98),
        "ssl.n_prototypes": g("dino.head_n_prototypes", 131072),
        "ssl.head_bottleneck_dim": g("dino.head_bottleneck_dim", 384),
        "ssl.ibot_separate_head": g("ibot.separate_head", True),
        "ssl.ibot_n_prototypes": g("ibot.head_n_prototypes", 131072),
        "ssl.ibot_head_bottleneck_dim": _dinov2(DINOV2_DEFAULT, "ibot.head_bottleneck_dim", 256),
        "ssl.centering": g("train.centering", "sinkhorn"),
        "ssl.momentum_teacher": g("teacher.momentum_teacher", 0.994),
        "ssl.base_lr": g("optim.base_lr", 2e-4),
        "ssl.warmup_frac": g("optim.warmup_epochs / optim.epochs", 0.16),
        "ssl.teacher_temp_warmup_frac": _dinov2(DINOV2_DEFAULT, "teacher.warmup_teacher_temp_epochs / vitg14.yaml optim.epochs", 0.06),
        "ssl.freeze_last_layer_frac": _dinov2(DINOV2_DEFAULT, "optim.freeze_last_layer_epochs / vitg14.yaml optim.epochs", 0.002),
        "ssl.layer_decay": g("optim.layerwise_decay", 1.0),
        "drop_path_rate": g("student.drop_path_rate", 0.4),
    }


def _pluto_tiny() -> dict[str, Cited]:
    demo, default = ssl_preset("demo"), SSLConfig()
    source = "demo preset: pluto.ssl.config.ssl_preset('demo') (CPU demo, 2 cores)"
    recipe = {f"ssl.{f.name}": Cited(getattr(demo, f.name), source) for f in fields(SSLConfig)
              if getattr(demo, f.name) != getattr(default, f.name)}
    batch = "make demo's batch (flows/demo.py): 8 tiles per step on one CPU process"
    return {**recipe, "batch_per_gpu": Cited(8, batch), "global_batch": Cited(8, batch), "drop_path_rate": Cited(0.0, source)}


_RECIPES = {"pluto_tiny": _pluto_tiny, "pluto_4s": _pluto_4s, "pluto_4g": _pluto_4g}
RECIPE_ARCHS = tuple(_RECIPES)


def recipe(arch: str) -> dict[str, Cited]:
    """The cited recipe of `arch`: dotted TrainConfig field ("global_batch", "ssl.base_lr") -> Cited."""
    if arch not in _RECIPES:
        raise ConfigError(f"train.arch={arch!r} has no recipe; choose one of {RECIPE_ARCHS}")
    return _RECIPES[arch]()


def _flatten(d: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in d.items() if k != "ssl"}
    ssl = d.get("ssl") or {}
    out.update({f"ssl.{k}": v for k, v in (ssl.to_dict() if isinstance(ssl, SSLConfig) else ssl).items()})
    return out


def _same(a: Any, b: Any) -> bool:
    return (list(a) if isinstance(a, (tuple, list)) else a) == (list(b) if isinstance(b, (tuple, list)) else b)


def bind_recipe(given: dict[str, Any] | TrainConfig) -> dict[str, Any]:
    """Explicit train settings (a nested dict, as the settings sources give it) -> the same dict with
    every recipe field it lacks filled from `given["arch"]`'s recipe and `recipe_overrides` listing
    the explicit values that differ from the recipe's."""
    given = given.to_dict() if isinstance(given, TrainConfig) else dict(given)
    arch = given.get("arch", TrainConfig.arch)
    cited = recipe(arch)
    explicit = _flatten(given)
    out = {k: v for k, v in given.items() if k != "ssl"}
    ssl = {k[4:]: v for k, v in explicit.items() if k.startswith("ssl.")}
    for key, c in cited.items():
        if key in explicit:
            continue
        if key.startswith("ssl."):
            ssl[key[4:]] = c.value
        else:
            out[key] = c.value
    out["ssl"] = ssl
    out["recipe_overrides"] = tuple(k for k, c in cited.items() if k in explicit and not _same(explicit[k], c.value))
    return out


def recipe_config(arch: str, **overrides: Any) -> TrainConfig:
    """TrainConfig of `arch`'s recipe under `overrides` (nested `ssl={...}`), for code without Settings."""
    return TrainConfig(**bind_recipe({**overrides, "arch": arch}))


def describe(cfg: TrainConfig) -> list[dict[str, Any]]:
    """Rows (field, value, source) of the resolved recipe: the recipe's citation, or "explicit" for an override."""
    resolved = _flatten(cfg.to_dict())
    rows = []
    for key, c in recipe(cfg.arch).items():
        source = f"explicit (recipe: {c.value!r}, {c.source})" if key in cfg.recipe_overrides else c.source
        rows.append({"field": key, "value": resolved[key], "source": source})
    return rows
