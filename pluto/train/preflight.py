"""Guard rails before launch: refuse settings known to fail, and estimate per-GPU memory.

Run by the launcher before a cluster job is submitted (so it does not die after queueing) and
again by every rank at start-up against the real device, before any model is built (settings the
architecture cannot run, such as a patch size it lacks, are read off `pluto.models.variants`).
All problems are reported together, each naming its setting.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pluto.errors import ConfigError
from pluto.train.config import AUGMENT_ON, DATA_KINDS, PRECISIONS, TrainConfig
from pluto.train.memory import GB, MemoryEstimate, arch_shape, estimate_memory

log = logging.getLogger(__name__)

# KoLeo (Sablayrolles et al. 2019) estimates entropy from each sample's nearest neighbour inside
# the per-GPU batch (DINOv2 computes it per rank); with fewer than 4 samples the neighbour is one
# of <= 2 others and -log(distance) explodes whenever two crops of near-identical tissue meet.
KOLEO_MIN_BATCH_PER_GPU = 4
# Headroom kept free: allocator fragmentation across multi-crop shapes and NCCL's own buffers.
USABLE_MEMORY_FRACTION = 0.9
# Dense bf16 peak per GPU (TFLOP/s) by device-name substring, for MFU (vendor datasheets).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A40": 150.0}


@dataclass(frozen=True)
class Preflight:
    """What the checks found: accumulation steps per rank and the memory estimate (None on CPU)."""

    world_size: int
    accumulation_steps: int
    memory: MemoryEstimate | None
    gpu_memory_bytes: float | None


def peak_tflops_for(device_name: str) -> float | None:
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return tflops
    return None


def _model_problems(cfg: TrainConfig) -> list[str]:
    """Settings the architecture cannot run, found from its registered facts without building it."""
    from pluto.models.variants import ARCH_PATCH_SIZES

    if cfg.arch not in ARCH_PATCH_SIZES:
        return [f"arch={cfg.arch!r} is not a PLUTO architecture; choose one of {tuple(ARCH_PATCH_SIZES)}"]
    problems = []
    lacking = [p for p in cfg.ssl.patch_sizes if p not in ARCH_PATCH_SIZES[cfg.arch]]
    if lacking:
        problems.append(
            f"ssl.patch_sizes={cfg.ssl.patch_sizes}: {cfg.arch} has no patch size {', '.join(map(str, lacking))} "
            f"(its patch sizes: {ARCH_PATCH_SIZES[cfg.arch]})"
        )
    if not 0 <= cfg.drop_path_rate < 1:
        problems.append(f"drop_path_rate={cfg.drop_path_rate} must be in [0, 1)")
    if not 0 < cfg.layerscale <= 1:
        problems.append(f"layerscale={cfg.layerscale} must be in (0, 1] (LayerScale's initial gamma; 0 would freeze every block)")
    if not 0 < cfg.ssl.layer_decay <= 1:
        problems.append(f"ssl.layer_decay={cfg.ssl.layer_decay} must be in (0, 1] (1.0: no decay, as dinov2's vitg14.yaml)")
    return problems


def check_config(cfg: TrainConfig, world_size: int, gpu_memory_bytes: float | None = None) -> Preflight:
    """Raise ConfigError listing every setting that cannot work; else return the plan.

    `gpu_memory_bytes` (per GPU) enables the memory check; None skips it (CPU runs).
    """
    problems: list[str] = []
    if world_size < 1:
        problems.append(f"world_size={world_size} must be >= 1")
        world_size = 1
    if cfg.precision not in PRECISIONS:
        problems.append(f"precision={cfg.precision!r} must be one of {PRECISIONS} (fp16 overflows in the heads, PLUTO-4 §3.2)")
    if cfg.data_kind not in DATA_KINDS:
        problems.append(f"data_kind={cfg.data_kind!r} must be one of {DATA_KINDS}")
    if cfg.augment_on not in AUGMENT_ON:
        problems.append(f"augment_on={cfg.augment_on!r} must be one of {AUGMENT_ON}")
    for name in ("batch_per_gpu", "global_batch", "steps", "ckpt_every", "keep_ckpts", "max_consecutive_nan", "log_every", "prefetch_factor"):
        if getattr(cfg, name) < 1:
            problems.append(f"{name}={getattr(cfg, name)} must be >= 1")
    if cfg.num_workers < 0 or cfg.knn_every < 0:
        problems.append("num_workers and knn_every must be >= 0")
    per_step = cfg.batch_per_gpu * world_size
    if per_step > 0 and cfg.global_batch % per_step:
        problems.append(
            f"global_batch={cfg.global_batch} is not divisible by batch_per_gpu x world_size = "
            f"{cfg.batch_per_gpu} x {world_size}: gradient accumulation needs a whole number of micro-batches"
        )
    if cfg.ssl.koleo_weight > 0 and cfg.batch_per_gpu < KOLEO_MIN_BATCH_PER_GPU:
        problems.append(
            f"KoLeo (koleo_weight={cfg.ssl.koleo_weight}) with batch_per_gpu={cfg.batch_per_gpu}: the per-GPU "
            f"nearest-neighbour estimate needs >= {KOLEO_MIN_BATCH_PER_GPU} tiles; raise the batch or use kde_weight"
        )
    if cfg.knn_every and not cfg.knn_data:
        problems.append("knn_every > 0 needs knn_data (a folder with labels.csv)")
    problems += _model_problems(cfg)
    memory = None
    if gpu_memory_bytes is not None and not problems:
        memory = estimate_memory(
            arch_shape(cfg.arch), cfg.batch_per_gpu, cfg.ssl, precision=cfg.precision,
            activation_checkpointing=cfg.activation_checkpointing,
        )
        budget = USABLE_MEMORY_FRACTION * gpu_memory_bytes
        if memory.total > budget:
            hint = "" if cfg.activation_checkpointing else "; enable activation_checkpointing or lower batch_per_gpu (raising accumulation)"
            problems.append(
                f"{cfg.arch} at batch_per_gpu={cfg.batch_per_gpu} needs ~{memory.describe()} per GPU, over "
                f"{USABLE_MEMORY_FRACTION:.0%} of {gpu_memory_bytes / GB:.0f} GB{hint}"
            )
    if problems:
        raise ConfigError("train settings: " + "; ".join(problems))
    if memory is not None:
        log.info("memory estimate per GPU: %s", memory.describe())
    return Preflight(world_size, cfg.accumulation_steps(world_size), memory, gpu_memory_bytes)
