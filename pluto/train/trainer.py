"""Distributed DINOv2-style pretraining: one process per GPU (or CPU rank) under torchrun.

One optimizer step (CONTRACTS.md "ssl"): schedules applied for the step, the step's patch size
drawn from (step, seed) on every rank, `accumulation_steps` micro-batches of forward + backward
(all but the last under DDP's `no_sync`, so gradients are all-reduced once per step), global-norm
clipping at `ssl.clip_grad` (PLUTO-4 §3.2: 3.0), prototype grads cancelled during the last-layer
freeze, fused AdamW step on CUDA, EMA teacher update with the scheduled momentum. Sinkhorn
centering is stateless per batch; the teacher EMA, the softmax centre's EMA (over all the step's
micro-batches) and the schedules move once per optimizer step.

DDP (PLUTO-4 §3.3): `gradient_as_bucket_view=True` and `bucket_cap_mb` per model (360 for ViT-G,
see `config.BUCKET_CAP_MB`); NCCL on GPUs, gloo on CPU, from the same code. A non-finite loss on
any rank or a non-finite gradient norm skips the step on every rank (one all-reduce of the flags
per step keeps the ranks in lock-step), is counted and logged, and aborts the run after
`max_consecutive_nan` in a row. SIGTERM (preemption) finishes the current step, writes a
checkpoint and returns `preempted=True`. Resume restores everything from the newest loadable
checkpoint; the data position is the global sample index, so the next batch is the one an
uninterrupted run would have drawn, whatever the world size now. Model-side randomness is
re-seeded from (seed, step, rank) every step, so it too repeats after a resume.
"""

from __future__ import annotations

import logging
import math
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pluto.errors import CheckpointError, PlutoError
from pluto.train.checkpoint import CheckpointMeta, capture_rng, load_latest, restore_rng, save_checkpoint
from pluto.train.config import TrainConfig
from pluto.train.data import StreamPosition, make_loader, open_rows, to_device
from pluto.train.memory import arch_shape
from pluto.train.preflight import check_config, peak_tflops_for
from pluto.train.throughput import mfu, train_flops_per_image

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
ADAMW_BETAS = (0.9, 0.999)  # DINOv2 optim defaults


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (torchrun's RANK, LOCAL_RANK, WORLD_SIZE).

    `torchrun`: started by torchrun, so a process group (NCCL/gloo) and DDP are set up even at
    world size 1 (the one-GPU NCCL smoke run exercises the same path as the cluster).
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    torchrun: bool = False
    restart_count: int = 0  # torchrun's TORCHELASTIC_RESTART_COUNT


@dataclass
class TrainResult:
    step: int
    global_sample_index: int
    nan_skipped: int
    preempted: bool
    export_dir: Path | None
    history: list[dict[str, float]] = field(default_factory=list)
    collapse: str | None = None  # pluto.ssl.collapse_verdict at the end of the run


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank, 0x7EA1]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _device(info: DistInfo) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


def build_objective(cfg: TrainConfig, device: torch.device) -> nn.Module:
    """Student (with the recipe's stochastic depth) and teacher `cfg.arch` backbones inside the SSL objective, on `device`."""
    import timm

    import pluto.models  # noqa: F401 - registers the pluto_* architectures
    from pluto.ssl import DinoV2Objective

    student = timm.create_model(cfg.arch, pretrained=False, drop_path_rate=cfg.drop_path_rate, drop_path_uniform=cfg.drop_path_uniform,
                                init_values=cfg.layerscale)
    teacher = timm.create_model(cfg.arch, pretrained=False, init_values=cfg.layerscale)  # no stochastic depth, as dinov2's build_model
    if cfg.activation_checkpointing:
        student.set_grad_checkpointing(True)
    obj = DinoV2Objective(student, teacher, cfg.ssl).to(device)
    if cfg.compile:
        obj.student["backbone"].compile(dynamic=False)
        obj.teacher["backbone"].compile(dynamic=False)
    return obj


def checkpoint_state(obj: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Student, teacher and the objective's own buffers (centres) split apart, optimizer, RNG."""
    full = {k: v.detach().cpu() for k, v in obj.state_dict().items()}
    parts: dict[str, dict[str, torch.Tensor]] = {"student": {}, "teacher": {}, "objective": {}}
    for k, v in full.items():
        head, _, rest = k.partition(".")
        if head in ("student", "teacher"):
            parts[head][rest] = v
        else:
            parts["objective"][k] = v
    return {**parts, "optimizer": optimizer.state_dict(), "rng": capture_rng()}


def restore_state(obj: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    full = {**state["objective"]}
    for tower in ("student", "teacher"):
        full.update({f"{tower}.{k}": v for k, v in state[tower].items()})
    obj.load_state_dict(full)
    optimizer.load_state_dict(state["optimizer"])
    restore_rng(state["rng"])


def warm_start(obj: nn.Module, model_dir: str | Path, arch: str) -> None:
    """Load a saved pluto model's weights (safetensors, hash-checked) into the student and the teacher
    backbone; the DINO/iBOT heads keep their fresh initialisation. Another arch is refused."""
    from pluto.models import checkpoint_filter_fn, load_model, read_config

    saved = read_config(model_dir)["arch"]
    if saved != arch:
        raise CheckpointError(f"{model_dir}: init_from holds a {saved} model, this run trains {arch}; refusing to warm-start")
    # the filter PI-resizes a patch kernel saved at another base size (models from before the 32 x 32 FlexiViT kernel)
    weights = checkpoint_filter_fn(load_model(model_dir).state_dict(), obj.student["backbone"])
    for tower in (obj.student, obj.teacher):
        try:
            tower["backbone"].load_state_dict(weights)
        except RuntimeError as exc:
            raise CheckpointError(f"{model_dir}: weights do not fit this run's {arch} backbone ({exc})") from exc
    log.info("warm start: student and teacher backbones from %s", model_dir)


def _check_resumable(meta: CheckpointMeta, cfg: TrainConfig, path: Path) -> None:
    saved = TrainConfig.from_dict(meta.config)
    for name in ("arch", "global_batch", "seed"):
        if getattr(saved, name) != getattr(cfg, name):
            raise CheckpointError(
                f"{path}: written with {name}={getattr(saved, name)!r}, this run has {getattr(cfg, name)!r}; "
                "resuming would change the model or the sample sequence"
            )
    if saved.ssl != cfg.ssl or saved.steps != cfg.steps:
        log.warning("%s: SSL settings or total steps differ from the checkpoint's; schedules follow this run's", path)


class _StopFlag:
    """SIGTERM sets it; the loop checks it once per step (handlers only where signals can be set)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("SIGTERM received: checkpointing after this step, then stopping")
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _knn_monitor(cfg: TrainConfig, backbone: nn.Module, device: torch.device) -> dict[str, float]:
    """kNN top-1 accuracy (pluto.eval.knn_accuracy) of the teacher on `cfg.knn_data`, 2-fold."""
    from pluto.eval.embeddings import extract_embeddings, input_px
    from pluto.eval.images import ImageFiles
    from pluto.eval.labeled import read_labels_csv
    from pluto.eval.linear_probe import knn_accuracy

    root = Path(cfg.knn_data)
    data = read_labels_csv(root, root / "labels.csv")
    emb = extract_embeddings(backbone, ImageFiles(data.paths, input_px(backbone)), "cls", 64, str(device))
    y = data.label_ids
    fold = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        fold[np.flatnonzero(y == c)[::2]] = True  # every other item of each class
    acc = [knn_accuracy(emb[a], y[a], emb[~a], y[~a], k=cfg.knn_k) for a in (fold, ~fold)]
    backbone.train(False)
    return {"knn_top1": float(np.mean(acc))}


def _watch_collapse(history: list[dict[str, float]], embed_dim: int, previous: str | None, tracker: Any, step: int) -> str | None:
    """Warn and tag the run (`pluto.collapse`) when the collapse verdict changes; "none" once it recovers."""
    from pluto.ssl import collapse_verdict

    verdict = collapse_verdict(history, embed_dim)
    if verdict != previous and (verdict or previous):
        if verdict:
            log.warning("step %d: the teacher shows %s collapse (pluto.ssl.collapse); its features are unlikely to beat random init",
                        step, verdict)
        tracker.set_tags({"pluto.collapse": verdict or "none", "pluto.collapse_step": step})
    return verdict


def train(
    cfg: TrainConfig,
    info: DistInfo = DistInfo(),
    *,
    on_step: Callable[[dict[str, float]], None] | None = None,
    before_backward: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
) -> TrainResult:
    """Run (or resume) pretraining to `cfg.steps`. Call once per process; torchrun sets up `info`.

    `on_step(metrics)` is called on rank 0 after every step (progress bars attach here);
    `before_backward(step, losses)` may alter the loss dict in place (fault injection in tests).
    """
    from pluto.ssl import MultiCropAugment, apply_schedules, build_schedules, cancel_last_layer_grads, param_groups, sample_patch_size

    device = _device(info)
    distributed = info.world_size > 1 or info.torchrun
    if distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # torchrun's env:// store can outlive a restart; keys under a per-attempt prefix keep a
        # restarted rank from reading a dead peer's address (seen as gloo "connection refused")
        store, _, _ = next(dist.rendezvous("env://", rank=info.rank, world_size=info.world_size))
        store = dist.PrefixStore(f"pluto/attempt-{info.restart_count}", store)
        dist.init_process_group(backend, store=store, rank=info.rank, world_size=info.world_size)
        log.info("process group: backend %s, rank %d of %d", backend, info.rank, info.world_size)
    gpu_bytes = None
    if device.type == "cuda":
        gpu_bytes = cfg.gpu_memory_gb * 1e9 if cfg.gpu_memory_gb else torch.cuda.get_device_properties(device).total_memory
    plan = check_config(cfg, info.world_size, gpu_bytes)
    accum = plan.accumulation_steps
    run_dir, ckpt_dir = Path(cfg.run_dir), Path(cfg.run_dir) / "checkpoints"
    is_main = info.rank == 0

    torch.manual_seed(cfg.seed)
    obj = build_objective(cfg, device)
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(
        param_groups(obj.student, 0.0, cfg.ssl.weight_decay, cfg.ssl.layer_decay, cfg.ssl.patch_embed_lr_mult),
        betas=ADAMW_BETAS, fused=fused,
    )
    schedules = build_schedules(cfg.ssl, cfg.steps, cfg.global_batch)
    step, sample_index, nan_skipped = 0, 0, 0
    resumed = load_latest(ckpt_dir)
    if resumed is not None:
        meta, state, path = resumed
        _check_resumable(meta, cfg, path)
        restore_state(obj, optimizer, state)
        step, sample_index, nan_skipped = meta.step, meta.global_sample_index, meta.nan_skipped
        log.info("resumed from %s: step %d, global sample %d (saved at world size %d, now %d)",
                 path, step, sample_index, meta.world_size, info.world_size)
    elif cfg.init_from:
        warm_start(obj, cfg.init_from, cfg.arch)

    model: nn.Module = obj
    if distributed:
        model = nn.parallel.DistributedDataParallel(
            obj, device_ids=[device.index] if device.type == "cuda" else None,
            bucket_cap_mb=cfg.resolved_bucket_cap_mb, gradient_as_bucket_view=True, broadcast_buffers=False,
        )
    pos = StreamPosition(sample_index, info.rank, info.world_size, cfg.batch_per_gpu)
    loader = make_loader(open_rows(cfg.data, cfg.data_kind, cfg.image_mpp), cfg.ssl, cfg.seed, pos, num_workers=cfg.num_workers,
                         prefetch_factor=cfg.prefetch_factor, pin_memory=device.type == "cuda", augment_on=cfg.augment_on)
    augment = MultiCropAugment(cfg.ssl) if cfg.augment_on == "device" else None
    batches = iter(loader)
    tracker = None
    if is_main:
        from pluto.tracking import Tracker

        tracker = Tracker(run_dir / "metrics.jsonl", cfg.tracking_uri, cfg.experiment, cfg.run_name or run_dir.name,
                          parent_run_id=cfg.parent_run_id, run_id_path=run_dir / "mlflow_run_id")
        tracker.log_params({"world_size": info.world_size, "accumulation_steps": accum, "bucket_cap_mb": cfg.resolved_bucket_cap_mb,
                            **{k: v for k, v in cfg.to_dict().items() if k != "ssl"},
                            **{f"ssl.{k}": v for k, v in cfg.ssl.to_dict().items()},
                            "recipe_overrides": ",".join(cfg.recipe_overrides) or "none"})  # settings set over the arch's recipe

    shape = arch_shape(cfg.arch)
    peak = cfg.peak_tflops or (peak_tflops_for(torch.cuda.get_device_name(device)) if device.type == "cuda" else None)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.precision == "bf16" and device.type == "cuda" else nullcontext()
    student_params = [p for p in obj.student.parameters() if p.requires_grad]
    sha = git_sha()
    consecutive_nan = 0
    history: list[dict[str, float]] = []
    preempted = False
    collapse: str | None = None

    def save(at_step: int) -> None:
        if is_main:
            meta = CheckpointMeta(at_step, sample_index, info.world_size, cfg.arch, cfg.to_json(), sha, time.time(), nan_skipped)
            save_checkpoint(ckpt_dir, meta, checkpoint_state(obj, optimizer), keep=cfg.keep_ckpts)
        if distributed:
            dist.barrier()

    obj.train()
    status = "FAILED"
    try:
        with _StopFlag() as stop:
            while step < cfg.steps:
                t_step = time.perf_counter()
                torch.manual_seed(step_seed(cfg.seed, step, info.rank))
                apply_schedules(optimizer, step, schedules)
                patch = sample_patch_size(step, cfg.seed, cfg.ssl.patch_sizes)
                teacher_temp = float(schedules.teacher_temp[step])
                optimizer.zero_grad(set_to_none=True)
                sums: dict[str, torch.Tensor] = {}
                wait_s = 0.0
                for micro in range(accum):
                    t_wait = time.perf_counter()
                    batch = to_device(next(batches), device, augment)
                    wait_s += time.perf_counter() - t_wait
                    sync = model.no_sync() if distributed and micro < accum - 1 else nullcontext()
                    with sync:
                        with amp:
                            losses = model(batch, teacher_temp=teacher_temp, patch_size=patch)
                        if before_backward is not None:
                            before_backward(step, losses)
                        (losses["loss"] / accum).backward()
                    for k, v in losses.items():
                        sums[k] = sums.get(k, 0.0) + v.detach().float() / accum
                grad_norm = torch.nn.utils.clip_grad_norm_([p for p in student_params if p.grad is not None], cfg.ssl.clip_grad)
                keys = sorted(sums)
                packed = torch.stack([sums[k] for k in keys] + [
                    (~torch.isfinite(sums["loss"])).float(),
                    (~torch.isfinite(grad_norm)).float().to(sums["loss"].device),
                    torch.tensor(float(stop.requested), device=sums["loss"].device),
                ])
                if distributed:
                    dist.all_reduce(packed)
                    packed[: len(keys)] /= info.world_size
                values = dict(zip(keys, packed[: len(keys)].tolist()))
                loss_bad, grad_bad, stop_any = (bool(x > 0) for x in packed[len(keys):].tolist())
                skipped = loss_bad or grad_bad
                if skipped:
                    optimizer.zero_grad(set_to_none=True)
                    obj.discard_step()
                    nan_skipped += 1
                    consecutive_nan += 1
                    log.warning("step %d skipped: non-finite %s (%d in a row, %d total)", step,
                                "loss" if loss_bad else "gradient", consecutive_nan, nan_skipped)
                    if consecutive_nan >= cfg.max_consecutive_nan:
                        raise PlutoError(f"{run_dir}: {consecutive_nan} non-finite steps in a row up to step {step}; aborting")
                else:
                    consecutive_nan = 0
                    if step < schedules.freeze_last_layer_iters:
                        cancel_last_layer_grads(obj.student)
                    optimizer.step()
                    obj.update_teacher(float(schedules.momentum[step]))
                step += 1
                sample_index += cfg.global_batch
                dt = time.perf_counter() - t_step
                images_s = cfg.global_batch / dt
                metrics = {
                    **values, "step": step, "lr": float(schedules.lr[step - 1]), "wd": float(schedules.weight_decay[step - 1]),
                    "momentum": float(schedules.momentum[step - 1]), "teacher_temp": teacher_temp, "patch_size": patch,
                    "grad_norm": float(grad_norm), "skipped": float(skipped), "nan_skipped_total": nan_skipped,
                    "images_per_s": images_s, "data_wait_frac": wait_s / dt, "step_s": dt,
                }
                if peak:
                    metrics["mfu"] = mfu(train_flops_per_image(shape, cfg.ssl, patch), images_s, info.world_size, peak)
                if device.type == "cuda":
                    metrics["gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
                if cfg.knn_every and step % cfg.knn_every == 0 and is_main:
                    metrics.update(_knn_monitor(cfg, obj.teacher["backbone"], device))
                history.append(metrics)
                if is_main:
                    tracker.log_metrics({k: v for k, v in metrics.items() if k != "step" and math.isfinite(v)}, step=step)
                    if step % cfg.log_every == 0:
                        log.info("step %d/%d loss %.4f lr %.2e %.1f img/s wait %.0f%%", step, cfg.steps,
                                 values["loss"], metrics["lr"], images_s, 100 * metrics["data_wait_frac"])
                    if on_step is not None:
                        on_step(metrics)
                    if step % cfg.log_every == 0 or step == cfg.steps:
                        collapse = _watch_collapse(history, obj.student["backbone"].embed_dim, collapse, tracker, step)
                if stop_any or step % cfg.ckpt_every == 0 or step == cfg.steps:
                    save(step)
                if stop_any:
                    preempted = True
                    break
        export_dir = None
        if is_main and not preempted:
            from pluto.models import save_model

            export_dir = save_model(obj.teacher["backbone"], run_dir / "export")
            log.info("teacher backbone exported to %s", export_dir)
        status = "KILLED" if preempted else "FINISHED"
    finally:
        if tracker is not None:
            tracker.close(status)
    return TrainResult(step, sample_index, nan_skipped, preempted, export_dir, history, collapse)

