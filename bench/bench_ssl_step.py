"""One DINOv2 SSL step (PLUTO objective) vs a raw-timm roofline measured in the same process.

PLUTO path: `DinoV2Objective` forward + backward on 2 global + n local crops (student fwd+bwd on
all crops with iBOT masks on the globals, teacher fwd on the globals, DINO/iBOT heads, Sinkhorn,
losses) — "ssl_step". Also timed: the full optimizer step ("ssl_full_step": + grad clipping, fused
AdamW on CUDA, teacher EMA), reported separately.
Roofline: a plain timm `VisionTransformer` of the same width/depth/heads/registers/FFN at the same
patch size, forward+backward on the same crop shapes plus a no-grad forward of a second copy on the
globals, no heads, no losses (issue 4's definition; DESIGN.md: ~1,250 images/s for ViT-S/16 on
one H100). images/s counts tiles (one tile = its 2 + n crops). FLOPs per step come from
`torch.utils.flop_counter.FlopCounterMode` on one step of each path; times are the minimum over
interleaved blocks; MFU = achieved FLOP/s / peak
(bf16 dense peak of the detected GPU, or `--peak-tflops`; none on CPU).

Data path (issue 5), same run: with `--slide` (a grid of real tiles read through OpenSlide) or
`--data` (a tile manifest dir or an image folder) the full step also runs on batches from the
training DataLoader (`pluto.train.data`, `--workers` processes, multi-crop on the CPU workers or
`--augment-on device`); "data_full_step" reports its images/s, the ratio to the synthetic-input
full step and the fraction of wall time spent waiting for the next batch (target >= 0.95x with
< 5% wait on a GPU).

    python -m bench.bench_ssl_step --quick                     # CPU: pluto_tiny, demo crops, batch 4
    python -m bench.bench_ssl_step --model pluto_4s --patch-size 16 --batch 32 --device cuda
    python -m bench.bench_ssl_step --model pluto_4g --batch 32 --device cuda [--grad-ckpt] [--compile]
    python -m bench.bench_ssl_step --quick --slide ../shared/data/wsi/CMU-1-Small-Region.svs --workers 1
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import platform
import subprocess
from pathlib import Path

import numpy as np
import timm
import torch
from timm.layers import SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer
from torch.utils.flop_counter import FlopCounterMode

import pluto.models  # noqa: F401  (registers the PLUTO models with timm)
from bench.common import machine as machine_state
from bench.common import publish, seconds_per_call
from pluto.ssl import DinoV2Objective, SSLConfig, param_groups, sample_masks, ssl_preset
from pluto.train.recipes import RECIPE_ARCHS, recipe_config

REPO = Path(__file__).resolve().parent.parent
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 tensor-core peaks (NVIDIA specs)


def baseline_vit(arch: dict, patch_size: int) -> VisionTransformer:
    """Raw timm ViT with the PLUTO model's width/depth/heads/registers/FFN, learned abs pos-embed, any image size."""
    swiglu = arch.get("swiglu_mlp", False)
    return VisionTransformer(
        img_size=arch["img_size"], patch_size=patch_size, embed_dim=arch["embed_dim"], depth=arch["depth"],
        num_heads=arch["num_heads"], mlp_ratio=arch["mlp_ratio"] * (2 if swiglu else 1),
        mlp_layer=SwiGLUPacked if swiglu else timm.layers.Mlp, act_layer=torch.nn.SiLU if swiglu else torch.nn.GELU,
        reg_tokens=arch["num_reg_tokens"], no_embed_class=True, init_values=arch.get("init_values"),
        num_classes=0, dynamic_img_size=True,
    )


def make_batch(cfg: SSLConfig, batch: int, patch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Crops of the configured shapes (values do not change the cost) and real iBOT block masks."""
    g, n_g, n_l = cfg.global_crop_px, cfg.n_global_crops, cfg.n_local_crops
    side = g // patch_size
    masks = sample_masks(n_g * batch, side, side, np.random.default_rng(0), cfg.mask_probability, cfg.mask_ratio)
    return {
        "global_crops": torch.randn(n_g * batch, 3, g, g, device=device),
        "local_crops": torch.randn(n_l * batch, 3, cfg.local_crop_px, cfg.local_crop_px, device=device),
        f"masks_p{patch_size}": torch.from_numpy(masks).to(device),
    }


def timed(steps: dict, device: torch.device, warmup: int, iters: int, repeats: int) -> dict[str, float]:
    """Seconds per call of each step: blocks of `iters` calls interleaved across steps `repeats` times, min per step.

    Interleaving and the minimum make the ratio robust to other load on the machine (a shared CPU
    or GPU only ever makes a block slower).
    """
    for step in steps.values():
        for _ in range(warmup):
            step()
    best = {name: float("inf") for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            best[name] = min(best[name], seconds_per_call(step, iters, device))
    return best


def count_flops(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()} CPU x{torch.get_num_threads()} threads, torch {torch.__version__}"


def git_sha() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def slide_grid(slide: Path, mpp: float, tile_px: int):
    """Manifest of every grid tile of `slide` at (mpp, tile_px); no QC filter (a throughput input)."""
    import pandas as pd

    from pluto.slides import TileSpec, slide_info
    from pluto.tiling.geometry import grid_origins, plan_spec
    from pluto.tiling.manifest import to_manifest

    info = slide_info(str(slide))
    plan = plan_spec(info, TileSpec(mpp, tile_px))
    xy = grid_origins(info, plan)
    n = len(xy)
    return to_manifest(pd.DataFrame({
        "slide_id": slide.stem, "path": str(slide), "level": plan.level, "x_l0": xy[:, 0], "y_l0": xy[:, 1], "mpp": mpp,
        "tile_px": tile_px, "read_px": plan.read_px, "region_id": np.arange(n), "tissue_frac": 1.0, "pen_frac": 0.0,
        "fold_frac": 0.0, "bubble_frac": 0.0, "mpp_override": np.nan,
    }))


def data_step_rate(args, cfg: SSLConfig, full_step, device: torch.device) -> dict:
    """Run `full_step` on DataLoader batches: seconds per step and the share of it spent waiting for data."""
    import time

    from pluto.ssl import MultiCropAugment
    from pluto.train.data import StreamPosition, make_loader, open_rows, to_device

    if args.slide:
        from pluto.tiling.dataset import TileRows

        rows = TileRows(slide_grid(args.slide, args.tile_mpp, args.tile_px))
    else:
        rows = open_rows(str(args.data), "images" if Path(args.data).is_dir() and not list(Path(args.data).glob("*.parquet"))
                         else "manifest", 0.5)
    loader = make_loader(rows, cfg, 0, StreamPosition(0, 0, 1, args.batch), num_workers=args.workers,
                         prefetch_factor=4, pin_memory=device.type == "cuda", augment_on=args.augment_on)
    augment = MultiCropAugment(cfg) if args.augment_on == "device" else None
    batches = iter(loader)
    steps = args.warmup + args.iters * args.repeats
    wait = total = 0.0
    for i in range(steps):
        t0 = time.perf_counter()
        batch = to_device(next(batches), device, augment)
        t1 = time.perf_counter()
        full_step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= args.warmup:
            wait, total = wait + t1 - t0, total + time.perf_counter() - t0
    return {"seconds": total / (steps - args.warmup), "data_wait_frac": wait / total, "tiles": len(rows)}


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    torch.manual_seed(0)
    student = timm.create_model(args.model, drop_path_rate=0.0)
    teacher = timm.create_model(args.model)
    p = args.patch_size or student.patch_size
    sizes = dict(global_crop_px=args.global_px, local_crop_px=args.local_px)
    sizes.update(n_prototypes=args.n_prototypes, ibot_n_prototypes=args.n_prototypes)
    base_cfg = recipe_config(args.preset).ssl if args.preset in RECIPE_ARCHS else ssl_preset(args.preset)
    cfg = dataclasses.replace(base_cfg, patch_sizes=(p,), **{k: v for k, v in sizes.items() if v})
    obj = DinoV2Objective(student, teacher, cfg).to(device).train()
    student.patch_embed.prewarm(device)
    teacher.patch_embed.prewarm(device)
    base = baseline_vit(student.arch_kwargs, p).to(device).train()
    base_teacher = baseline_vit(student.arch_kwargs, p).to(device).eval().requires_grad_(False)
    if args.grad_ckpt:
        student.set_grad_checkpointing(True)
        base.set_grad_checkpointing(True)
    if args.compile:
        for m in (student, teacher, base, base_teacher):
            m.forward_features = torch.compile(m.forward_features, dynamic=False)
    batch = make_batch(cfg, args.batch, p, device)
    masks = batch[f"masks_p{p}"]
    opt = torch.optim.AdamW(param_groups(obj.student, 1e-4, 0.04), fused=device.type == "cuda")

    def ssl_step() -> None:
        with amp:
            losses = obj(batch, teacher_temp=0.07, patch_size=p)
        losses["loss"].backward()
        obj.zero_grad(set_to_none=True)

    def ssl_full_step(inputs: dict[str, torch.Tensor] = batch) -> None:
        with amp:
            losses = obj(inputs, teacher_temp=0.07, patch_size=p)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(obj.student.parameters(), cfg.clip_grad)
        opt.step()
        obj.update_teacher(0.994)

    def roofline_step() -> None:
        with amp:
            with torch.no_grad():
                base_teacher.forward_features(batch["global_crops"])
            out_g = base.forward_features(batch["global_crops"])
            out_l = base.forward_features(batch["local_crops"])
        (out_g.float().mean() + out_l.float().mean()).backward()
        base.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps = {"roofline_timm": roofline_step, "ssl_step": ssl_step, "ssl_full_step": ssl_full_step}
    flops = {name: count_flops(step) for name, step in steps.items()}
    seconds = timed(steps, device, args.warmup, args.iters, args.repeats)
    peak = peak_tflops(device, args.peak_tflops)
    rows = []
    for name, sec in seconds.items():
        achieved = flops[name] / sec / 1e12
        rows.append({
            "path": name, "images_per_s": round(args.batch / sec, 2), "step_ms": round(sec * 1e3, 2),
            "gflop_per_image": round(flops[name] / args.batch / 1e9, 2), "tflops": round(achieved, 4),
            "mfu": round(achieved / peak, 4) if peak else None,
        })
    data = None
    if args.slide or args.data:
        data = data_step_rate(args, cfg, ssl_full_step, device)
        sec = data["seconds"]
        rows.append({"path": "data_full_step", "images_per_s": round(args.batch / sec, 2), "step_ms": round(sec * 1e3, 2),
                     "gflop_per_image": rows[-1]["gflop_per_image"], "tflops": round(flops["ssl_full_step"] / sec / 1e12, 4),
                     "mfu": round(flops["ssl_full_step"] / sec / 1e12 / peak, 4) if peak else None,
                     "data_wait_frac": round(data["data_wait_frac"], 4),
                     "x_synthetic": round(seconds["ssl_full_step"] / sec, 3)})
    base_rate = rows[0]["images_per_s"]
    for row in rows:
        row["x_roofline"] = round(row["images_per_s"] / base_rate, 3)
    return {
        "data_path": None if data is None else {
            "source": str(args.slide or args.data), "tiles": data["tiles"], "workers": args.workers,
            "augment_on": args.augment_on, "tile": f"{args.tile_px} px at {args.tile_mpp} um/px" if args.slide else None,
        },

        "bench": "bench_ssl_step", "model": args.model, "patch_size": p, "batch_tiles": args.batch,
        "crops": f"{cfg.n_global_crops}x{cfg.global_crop_px} + {cfg.n_local_crops}x{cfg.local_crop_px}",
        "n_prototypes": cfg.n_prototypes, "masked_images": int(masks.any(dim=1).sum()),
        "device": str(device), "dtype": "bf16 autocast" if device.type == "cuda" else "fp32",
        "compile": args.compile, "grad_ckpt": args.grad_ckpt, "peak_tflops": peak,
        "max_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        "machine": {**machine_state(), "device": machine(device)}, "git_sha": git_sha(),
        "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows,
    }


def table(result: dict) -> str:
    lines = [
        f"{result['model']} p{result['patch_size']}, {result['batch_tiles']} tiles x ({result['crops']}), "
        f"{result['n_prototypes']} prototypes, {result['dtype']}, {result['machine']['device']}, git {result['git_sha']}",
        "",
        "| path | images/s | x roofline | ms/step | GFLOP/image | TFLOP/s | MFU | data wait | x synthetic |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        wait = f"{100 * r['data_wait_frac']:.1f}%" if "data_wait_frac" in r else ""
        lines.append(
            f"| {r['path']} | {r['images_per_s']:,} | {r['x_roofline']} | {r['step_ms']} | {r['gflop_per_image']} "
            f"| {r['tflops']} | {mfu} | {wait} | {r.get('x_synthetic', '')} |"
        )
    if result.get("data_path"):
        d, st = result["data_path"], result["machine"]
        lines += ["", f"data_full_step: {d['tiles']} tiles from {d['source']} ({d['tile'] or 'files'}), {d['workers']} DataLoader "
                      f"worker(s), multi-crop on {d['augment_on']}; {st['cores']} cores, load {st['load_1min']} (1 min)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CPU run: pluto_tiny, demo preset, batch 4")
    ap.add_argument("--model", default="pluto_4s")
    ap.add_argument("--preset", default=None, help="SSL preset or an arch's recipe (default: demo for pluto_tiny, else the model's recipe)")
    ap.add_argument("--patch-size", type=int, default=None)
    ap.add_argument("--batch", type=int, default=32, help="tiles per step (PLUTO-4: 32 per GPU)")
    ap.add_argument("--n-prototypes", type=int, default=None)
    ap.add_argument("--global-px", type=int, default=None)
    ap.add_argument("--local-px", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile(dynamic=False) the backbones")
    ap.add_argument("--grad-ckpt", action="store_true", help="activation checkpointing in the student and baseline")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slide", type=Path, default=None, help="data path: grid of real tiles from this slide (OpenSlide)")
    ap.add_argument("--data", type=Path, default=None, help="data path: a tile manifest dir or an image folder")
    ap.add_argument("--tile-mpp", type=float, default=0.5)
    ap.add_argument("--tile-px", type=int, default=275, help="PLUTO-4 tiles: 275 or 550 px (§2.5)")
    ap.add_argument("--workers", type=int, default=8, help="DataLoader worker processes")
    ap.add_argument("--augment-on", choices=("cpu", "device"), default="cpu")
    ap.add_argument("--readme", action="store_true", help="also write the bench/README.md section")
    args = ap.parse_args(argv)
    if args.quick:
        args.model, args.batch, args.warmup, args.iters, args.repeats = "pluto_tiny", 4, 1, 2, 3
    args.preset = args.preset or ("demo" if args.model == "pluto_tiny" else args.model)
    result = run(args)
    title = "one SSL step vs raw timm, and the real-tile data path"
    publish("bench_ssl_step", title, result, table(result), quick=args.quick, readme=args.readme)
    return result


if __name__ == "__main__":
    main()
