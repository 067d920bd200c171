"""Backbone forward+backward throughput: pluto_4s at patch 8/16/32 vs raw timm ViT-S, same process.

The baseline for each patch size is timm's `vit_small_patch{p}_224` with 4 registers, built at the
same width/depth and run on the same batch shape, so the ratio is what the FlexiViT kernel resize
and the RoPE cost (DESIGN.md: raw timm ViT-S/16@224 fwd+bwd 5,179 img/s eager on one H100, bf16).
bf16 autocast on CUDA, fp32 on CPU; warm-up steps are excluded; images/s is the median of repeats.

    python -m bench.bench_models                 # GPU: batch 128 at 224 px
    python -m bench.bench_models --quick         # CPU smoke run: batch 2 at 64 px, patch 16/32
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
from pathlib import Path

import timm
import torch

import pluto.models  # noqa: F401  (registers pluto_4s)
from bench.common import seconds_per_call

REPO = Path(__file__).resolve().parent.parent


def images_per_s(model: torch.nn.Module, forward, x: torch.Tensor, warmup: int, steps: int, repeats: int) -> float:
    """Median images/s of `forward(x).float().mean().backward()` over `repeats` timed blocks."""
    device = x.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        with autocast:
            out = forward(x)
        out.float().mean().backward()
        model.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    rates = []
    for _ in range(repeats):
        rates.append(x.shape[0] / seconds_per_call(step, steps, device))
    return statistics.median(rates)


def run(device: str, batch: int, img_px: int, patch_sizes: tuple[int, ...], warmup: int, steps: int, repeats: int) -> list[dict]:
    dev = torch.device(device)
    pluto = timm.create_model("pluto_4s").to(dev).train()
    pluto.patch_embed.prewarm(dev)
    x = torch.randn(batch, 3, img_px, img_px, device=dev)
    rows = []
    for p in patch_sizes:
        base = timm.create_model(
            f"vit_small_patch{p}_224", img_size=img_px, reg_tokens=4, num_classes=0, init_values=1e-5
        ).to(dev).train()
        base_rate = images_per_s(base, base.forward_features, x, warmup, steps, repeats)
        rate = images_per_s(pluto, lambda t, p=p: pluto.forward_features(t, patch_size=p), x, warmup, steps, repeats)
        rows.append({"patch_size": p, "timm_img_s": round(base_rate, 1), "pluto_img_s": round(rate, 1), "ratio": round(rate / base_rate, 3)})
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CPU smoke run: tiny batch and image")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args(argv)
    if args.quick:
        settings = dict(batch=2, img_px=64, patch_sizes=(16, 32), warmup=1, steps=2, repeats=3)
    else:
        settings = dict(batch=128, img_px=224, patch_sizes=(8, 16, 32), warmup=5, steps=10, repeats=5)
    rows = run(args.device, **settings)
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else None
    result = {
        "bench": "bench_models", "git_sha": sha, "device": args.device, "gpu": gpu,
        "machine": platform.platform(), "torch": torch.__version__, "timm": timm.__version__,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}, "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"bench_models-{'quick-' if args.quick else ''}{sha}.json"
    (args.out / name).write_text(json.dumps(result, indent=2))
    table = ["| patch | timm ViT-S img/s | pluto_4s img/s | ratio |", "|---|---|---|---|"]
    table += [f"| {r['patch_size']} | {r['timm_img_s']} | {r['pluto_img_s']} | {r['ratio']} |" for r in rows]
    print("\n".join(table))  # noqa: T201 - a benchmark script reports on stdout
    return result


if __name__ == "__main__":
    main()
