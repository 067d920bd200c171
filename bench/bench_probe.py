"""EVA-protocol linear probe on 100k cached embeddings vs a raw torch training loop (issue 6 speed target:
under a minute per seed on the GPU).

- `pluto`: `pluto.eval.linear_probe.fit_linear_probe` with `EVA_PROBE` (AdamW lr 3e-4, batch 256,
  12,500 steps, cosine decay, seeded batch draws, validation balanced accuracy every 250 steps,
  best-validation weights scored on the test set).
- `raw`: the same numpy arrays moved to the device, `nn.Linear` + AdamW lr 3e-4, same steps and batch,
  indices drawn on the device, no validation, no schedule, no checkpoint copies; test predictions at the end.

Both start from host (numpy) arrays, as embeddings read from the cache are, and both count the
transfer. Embeddings are a seeded Gaussian class mixture (`--classes` classes, unit noise, class means
spread so that pairwise margins are ~3 noise SDs): accuracy is meaningful, well below 1, and the two
paths should reach about the same test balanced accuracy. Seeds run back to back after a short warm-up
of both paths.

    python -m bench.bench_probe --quick                                   # CPU smoke run, reduced size
    python -m bench.bench_probe --device cuda --dim 384  --readme          # ViT-S embeddings
    python -m bench.bench_probe --device cuda --dim 1536 --readme          # ViT-G embeddings
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from bench.common import machine, publish
from pluto.eval.linear_probe import EVA_PROBE, ProbeProtocol, fit_linear_probe
from pluto.eval.metrics import balanced_accuracy

MEAN_SPREAD_SD = 3.0  # distance between two class means, in noise SDs along the line joining them


def class_mixture(n: int, dim: int, classes: int, means_seed: int, sample_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) float32 embeddings and int64 labels: balanced classes, means N(0, s^2 I) with s = 3 / sqrt(2 dim),
    so two means are ~3 unit-noise SDs apart. Splits share `means_seed` (same classes) and differ in `sample_seed`."""
    means = np.random.default_rng(means_seed).normal(0.0, MEAN_SPREAD_SD / np.sqrt(2 * dim), (classes, dim)).astype(np.float32)
    rng = np.random.default_rng([means_seed, sample_seed])
    y = np.arange(n) % classes
    return (means[y] + rng.standard_normal((n, dim), dtype=np.float32)), y.astype(np.int64)


def raw_probe(train_x, train_y, test_x, test_y, steps: int, batch: int, lr: float, seed: int, device: torch.device) -> float:
    """Plain loop: nn.Linear + AdamW on device tensors; test balanced accuracy of the last weights."""
    torch.manual_seed(seed)
    x, y = torch.as_tensor(train_x, device=device), torch.as_tensor(train_y, device=device)
    head = nn.Linear(x.shape[1], int(train_y.max()) + 1, device=device)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), device=device)
        loss = nn.functional.cross_entropy(head(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = head(torch.as_tensor(test_x, device=device)).argmax(1).cpu().numpy()
    return balanced_accuracy(test_y, pred)


def _timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    protocol: ProbeProtocol = replace(EVA_PROBE, steps=args.steps)
    (tx, ty), (vx, vy), (sx, sy) = (class_mixture(n, args.dim, args.classes, args.data_seed, k)
                                    for k, n in enumerate((args.train, args.val, args.test)))
    warm = replace(protocol, steps=min(50, protocol.steps), eval_every=min(25, protocol.eval_every))
    fit_linear_probe(tx[:4096], ty[:4096], vx, vy, sx, sy, warm, 0, args.classes, args.device)
    raw_probe(tx[:4096], ty[:4096], sx, sy, warm.steps, protocol.batch_size, protocol.lr, 0, device)
    rows = []
    for seed in range(args.seeds):
        fit, s_pluto = _timed(lambda: fit_linear_probe(tx, ty, vx, vy, sx, sy, protocol, seed, args.classes, args.device), device)
        raw_bacc, s_raw = _timed(lambda: raw_probe(tx, ty, sx, sy, protocol.steps, protocol.batch_size, protocol.lr, seed, device), device)
        rows.append({"seed": seed, "pluto_s": s_pluto, "raw_s": s_raw, "x_raw": s_pluto / s_raw, "pluto_test_bacc": fit.test_balanced_accuracy,
                     "raw_test_bacc": raw_bacc, "best_step": fit.best_step, "n_validations": len(fit.val_history)})
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else machine()["cpu"]
    return {"benchmark": "bench_probe", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), "device": dev_name,
            "device_arg": args.device, "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "protocol": protocol.to_dict(),
            "train": args.train, "val": args.val, "test": args.test, "dim": args.dim, "classes": args.classes, "rows": rows}


def table(result: dict) -> str:
    m, p = result["machine"], result["protocol"]
    lines = [f"{result['train']:,} train / {result['val']:,} val / {result['test']:,} test embeddings, {result['dim']}-d, "
             f"{result['classes']} classes; {p['steps']:,} steps, batch {p['batch_size']}, validation every {p['eval_every']}; "
             f"{result['device']} (`--device {result['device_arg']}`, {result['torch_threads']} torch threads, torch {result['torch']}), "
             f"git {m['git_sha']}, load {m['load_1min']} at start, {result['date']}.",
             "", "| seed | pluto s | raw s | x raw (time) | pluto test bacc | raw test bacc | best step |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['pluto_s']:.2f} | {r['raw_s']:.2f} | {r['x_raw']:.2f} | {r['pluto_test_bacc']:.3f} | "
              f"{r['raw_test_bacc']:.3f} | {r['best_step']} |" for r in result["rows"]]
    if result["device_arg"] == "cpu":
        lines += ["", "No GPU in the session that wrote this: a CPU run on a 2-core VM shared with other jobs"
                  + ("" if p["steps"] == EVA_PROBE.steps and result["train"] >= 100_000 else ", at reduced size (steps/embeddings above)")
                  + "; it checks the path end to end and the accuracy parity, not the GPU target. On CPU `fit_linear_probe` "
                  "runs small problems on one thread (`pluto.eval.threads`), the raw loop on torch's default threads."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dim", type=int, default=384, help="384 (ViT-S CLS) or 1536 (ViT-G CLS)")
    ap.add_argument("--classes", type=int, default=9, help="9 like CRC-100K")
    ap.add_argument("--train", type=int, default=100_000)
    ap.add_argument("--val", type=int, default=10_000)
    ap.add_argument("--test", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=EVA_PROBE.steps)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="CPU smoke run: 20k train, 2,500 steps, 1 seed")
    ap.add_argument("--readme", action="store_true", help="write the bench/README.md section")
    args = ap.parse_args(argv)
    if args.quick:
        args.train, args.val, args.test, args.steps, args.seeds = 20_000, 2_000, 2_000, 2_500, 1
    result = run(args)
    publish("bench_probe", "EVA linear probe on cached embeddings vs a raw torch loop", result, table(result),
            quick=args.quick, readme=args.readme)
    return result


if __name__ == "__main__":
    main()
