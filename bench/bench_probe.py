"""eva-preset linear probe on 100k cached embeddings vs a raw torch loop, with eva's own trainer timed beside it.

Issue 13's target: the project's probe within 1.5x of a raw torch loop in the same run.

- `pluto`: `fit_linear_probe` with `probe_protocol_for("crc", "eva")` (eva 0.4.5's crc.yaml: AdamW lr
  3e-4, weight decay 0.01, batch 256 in shuffled epochs, HeadModule's ConstantLR warm-up, validation
  each epoch with eva's metric, early stopping with patience 7, best checkpoint, at most 12,500 steps).
- `raw`: the same numpy arrays moved to the device, `nn.Linear` + AdamW (same lr and weight decay),
  the same batch size and the number of steps the pluto run took (it may stop early), a device-side
  permutation per epoch; no validation, no warm-up, no checkpoint copies; test predictions at the end.
- `eva`: eva's own `HeadModule` under `eva.Trainer` with the configs' ModelCheckpoint and EarlyStopping
  (`eva_head_module_run`, also the reference of tests/eval/test_probe_parity.py), `--eva-steps` steps
  (fewer: it is about 10x slower a step on CPU), reported per step; skipped where eva or Lightning is
  not installed.

pluto and raw start from host (numpy) arrays, as embeddings read from the cache are, and both count
the transfer. Embeddings are a seeded Gaussian class mixture (`--classes` classes, unit noise, class
means ~3 noise SDs apart): accuracy is meaningful, well below 1, and pluto and raw should reach about the
same test balanced accuracy. Seeds run back to back after a short warm-up of both paths.

    python -m bench.bench_probe --quick                                   # CPU smoke run, reduced size
    python -m bench.bench_probe --device cuda --dim 384  --readme          # ViT-S embeddings
    python -m bench.bench_probe --device cuda --dim 1536 --readme          # ViT-G embeddings
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.common import machine, publish
from pluto.eval.linear_probe import ProbeProtocol, fit_linear_probe, probe_protocol_for
from pluto.eval.metrics import balanced_accuracy

MEAN_SPREAD_SD = 3.0  # distance between two class means, in noise SDs along the line joining them
TASK = "crc"  # 100k training embeddings, 9 classes: the eva config the benchmark's size matches


def class_mixture(n: int, dim: int, classes: int, means_seed: int, sample_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) float32 embeddings and int64 labels: balanced classes, means N(0, s^2 I) with s = 3 / sqrt(2 dim),
    so two means are ~3 unit-noise SDs apart. Splits share `means_seed` (same classes) and differ in `sample_seed`."""
    means = np.random.default_rng(means_seed).normal(0.0, MEAN_SPREAD_SD / np.sqrt(2 * dim), (classes, dim)).astype(np.float32)
    rng = np.random.default_rng([means_seed, sample_seed])
    y = np.arange(n) % classes
    return (means[y] + rng.standard_normal((n, dim), dtype=np.float32)), y.astype(np.int64)


def raw_probe(train_x, train_y, test_x, test_y, p: ProbeProtocol, steps: int, seed: int, device: torch.device) -> float:
    """Plain loop: nn.Linear + AdamW on device tensors, a device permutation per epoch; test balanced accuracy of
    the last weights."""
    torch.manual_seed(seed)
    x, y = torch.as_tensor(train_x, device=device), torch.as_tensor(train_y, device=device)
    head = nn.Linear(x.shape[1], int(train_y.max()) + 1, device=device)
    opt = torch.optim.AdamW(head.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    done = 0
    while done < steps:
        for idx in torch.randperm(x.shape[0], device=device).split(p.batch_size)[: steps - done]:
            loss = nn.functional.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
    with torch.no_grad():
        pred = head(torch.as_tensor(test_x, device=device)).argmax(1).cpu().numpy()
    return balanced_accuracy(test_y, pred)


class EpochPermutations(torch.utils.data.Sampler):
    """A fresh permutation each epoch from a seeded generator: what `shuffle=True` draws, and the order
    `eva_loop.train_epochs` draws for the same seed."""

    def __init__(self, n: int, seed: int):
        self.n, self.gen = n, torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=self.gen).tolist())


def eva_head_module_run(train, val, test, p: ProbeProtocol, n_classes: int, seed: int, root: Path, device: str = "cpu") -> dict:
    """One run of eva's own `HeadModule` under `eva.Trainer`, built as eva's offline classification configs build it.

    The config's criterion (CrossEntropyLoss, or BCEWithLogitsLoss on one logit), AdamW with the
    config's lr and no scheduler argument (HeadModule's default applies), eva's metric collection,
    ModelCheckpoint (best, save_top_k 1, mode max) and EarlyStopping (min_delta 0) on the monitored
    metric, then eva's `run_evaluation` (fit, validate and test on the best checkpoint). The head is
    torch's default `nn.Linear` under `torch.manual_seed(seed)` and the batches come in
    `EpochPermutations(seed)`: the same init and order as `fit_linear_probe` with that seed.
    Returns the test and validation scores, the best epoch, and the wall seconds of the run.
    """
    import eva
    from eva.core.data.datamodules import schemas
    from eva.core.metrics import structs
    from eva.core.trainers import functional
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    monitor = "val/BinaryBalancedAccuracy" if p.binary else "val/MulticlassAccuracy"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(np.asarray(train[0]).shape[1], 1 if p.binary else n_classes)
    metrics = eva.metrics.BinaryClassificationMetrics() if p.binary else eva.metrics.MulticlassClassificationMetrics(num_classes=n_classes)
    model = eva.HeadModule(head=head, criterion=nn.BCEWithLogitsLoss() if p.binary else nn.CrossEntropyLoss(),
                           optimizer=functools.partial(torch.optim.AdamW, lr=p.lr),  # weight decay: torch's default, as the configs
                           metrics=structs.MetricsSchema(common=[eva.metrics.AverageLoss(), metrics]))

    def dataset(x, y):  # eva's embeddings datasets cast binary targets to float32 (the configs' ToDtype)
        return torch.utils.data.TensorDataset(torch.as_tensor(np.asarray(x)),
                                              torch.as_tensor(np.asarray(y), dtype=torch.float32 if p.binary else torch.long))

    loader = functools.partial(eva.DataLoader, batch_size=p.batch_size, num_workers=0, persistent_workers=False,
                               prefetch_factor=None, pin_memory=False)
    data = eva.DataModule(datasets=schemas.DatasetsSchema(train=dataset(*train), val=dataset(*val), test=dataset(*test)),
                          dataloaders=schemas.DataloadersSchema(train=loader(sampler=EpochPermutations(len(train[1]), seed)),
                                                                val=loader(), test=loader()))
    ckpt_dir = Path(root) / f"run{seed}"
    trainer = eva.Trainer(default_root_dir=str(root), n_runs=1, max_steps=p.steps, checkpoint_type="best",
                          accelerator="gpu" if device.startswith("cuda") else "cpu", devices=1, logger=False,
                          enable_progress_bar=False, enable_model_summary=False,
                          callbacks=[ModelCheckpoint(dirpath=str(ckpt_dir), filename="best", save_top_k=1, monitor=monitor, mode="max"),
                                     EarlyStopping(min_delta=0, patience=p.patience, monitor=monitor, mode="max")])
    t0 = time.perf_counter()
    (val_scores,), (test_scores,) = functional.run_evaluation(trainer, model, data, stages=["fit", "validate", "test"], verbose=False)
    seconds = time.perf_counter() - t0
    name = monitor.split("/")[1]
    return {"test": test_scores[f"test/{name}"], "val": val_scores[f"val/{name}"],
            "best_epoch": torch.load(ckpt_dir / "best.ckpt", weights_only=False)["epoch"], "seconds": seconds}


def _timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0


def _eva_per_step(tx, ty, vx, vy, sx, sy, protocol: ProbeProtocol, args) -> dict | None:
    """eva's trainer for `--eva-steps` steps (early stopping off, so every step runs): seconds per step."""
    if args.eva_steps <= 0:
        return None
    try:
        import eva  # noqa: F401
        import lightning  # noqa: F401
    except ImportError as exc:
        return {"skipped": f"eva/lightning not installed ({exc})"}
    if args.eva_steps < -(-len(ty) // protocol.batch_size):
        raise ValueError(f"--eva-steps {args.eva_steps} is less than one epoch: eva's trainer would never validate")
    p = replace(protocol, steps=args.eva_steps, patience=args.eva_steps)
    with tempfile.TemporaryDirectory() as root:
        run = eva_head_module_run((tx, ty), (vx, vy), (sx, sy), p, args.classes, 0, Path(root), args.device)
    return {"steps": p.steps, "seconds": run["seconds"], "ms_per_step": 1000 * run["seconds"] / p.steps}


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    protocol = replace(probe_protocol_for(TASK, "eva"), steps=args.steps)
    (tx, ty), (vx, vy), (sx, sy) = (class_mixture(n, args.dim, args.classes, args.data_seed, k)
                                    for k, n in enumerate((args.train, args.val, args.test)))
    warm = replace(protocol, steps=min(50, protocol.steps))
    fit_linear_probe(tx[:4096], ty[:4096], vx, vy, sx, sy, warm, 0, args.classes, args.device)
    raw_probe(tx[:4096], ty[:4096], sx, sy, protocol, warm.steps, 0, device)
    rows = []
    for seed in range(args.seeds):
        fit, s_pluto = _timed(lambda: fit_linear_probe(tx, ty, vx, vy, sx, sy, protocol, seed, args.classes, args.device), device)
        raw_bacc, s_raw = _timed(lambda: raw_probe(tx, ty, sx, sy, protocol, fit.steps, seed, device), device)
        rows.append({"seed": seed, "steps": fit.steps, "epochs": fit.epochs, "best_epoch": fit.best_epoch, "pluto_s": s_pluto,
                     "raw_s": s_raw, "x_raw": s_pluto / s_raw, "pluto_test_bacc": fit.test_balanced_accuracy, "raw_test_bacc": raw_bacc})
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else machine()["cpu"]
    return {"benchmark": "bench_probe", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), "device": dev_name,
            "device_arg": args.device, "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "protocol": protocol.to_dict(),
            "train": args.train, "val": args.val, "test": args.test, "dim": args.dim, "classes": args.classes, "rows": rows,
            "eva": _eva_per_step(tx, ty, vx, vy, sx, sy, protocol, args)}


def table(result: dict) -> str:
    m, p, e = result["machine"], result["protocol"], result["eva"]
    lines = [f"{result['train']:,} train / {result['val']:,} val / {result['test']:,} test embeddings, {result['dim']}-d, "
             f"{result['classes']} classes; eva preset ({p['task']}.yaml: at most {p['steps']:,} steps, batch {p['batch_size']}, "
             f"patience {p['patience']}); {result['device']} (`--device {result['device_arg']}`, torch threads "
             f"{result['torch_threads']}, torch {result['torch']}), git {m['git_sha']}, load {m['load_1min']} at start, {result['date']}.",
             "", "| seed | steps (epochs) | pluto s | raw s | pluto / raw | pluto ms/step | pluto test bacc | raw test bacc |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['steps']:,} ({r['epochs']}) | {r['pluto_s']:.2f} | {r['raw_s']:.2f} | {r['x_raw']:.2f} | "
              f"{1000 * r['pluto_s'] / r['steps']:.2f} | {r['pluto_test_bacc']:.3f} | {r['raw_test_bacc']:.3f} |" for r in result["rows"]]
    if e and "ms_per_step" in e:
        per_step = np.mean([r["pluto_s"] / r["steps"] for r in result["rows"]]) * 1000
        lines += ["", f"eva's own HeadModule under eva.Trainer, same data and protocol, {e['steps']:,} steps (early stopping off): "
                  f"{e['seconds']:.1f} s, {e['ms_per_step']:.2f} ms/step, {e['ms_per_step'] / per_step:.1f}x pluto's per step."]
    elif e:
        lines += ["", f"eva's trainer: {e['skipped']}."]
    if result["device_arg"] == "cpu":
        full = p["steps"] == probe_protocol_for(TASK, "eva").steps and result["train"] >= 100_000
        lines += ["", "No GPU in the session that wrote this: a CPU run on a 2-core VM shared with other jobs, "
                  + ("at the full size" if full else "at reduced size (steps/embeddings above)")
                  + f", every path on the same torch threads (`--threads`). A run ends where eva's would:"
                  f" early stopping (patience {p['patience']} epochs of {-(-result['train'] // p['batch_size']):,} steps) or max_steps;"
                  " raw runs the same number of steps."
                  " GPU figures pending (no device lent):", "",
                  "    python -m bench.bench_probe --device cuda --dim 384  --readme     # ViT-S CLS embeddings",
                  "    python -m bench.bench_probe --device cuda --dim 1536 --readme     # ViT-G CLS embeddings"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dim", type=int, default=384, help="384 (ViT-S CLS) or 1536 (ViT-G CLS)")
    ap.add_argument("--classes", type=int, default=9, help="9 like CRC-100K")
    ap.add_argument("--train", type=int, default=100_000)
    ap.add_argument("--val", type=int, default=10_000)
    ap.add_argument("--test", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=probe_protocol_for(TASK, "eva").steps, help="max_steps")
    ap.add_argument("--eva-steps", type=int, default=1000, help="steps of eva's own trainer, at least one epoch (0: skip)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads for every path (0: torch's default); 1 on a "
                    "loaded shared CPU, where OpenMP spin-waits make multi-threaded timings noise")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="CPU smoke run: 20k train, 2,500 steps, 1 seed")
    ap.add_argument("--readme", action="store_true", help="write the bench/README.md section")
    args = ap.parse_args(argv)
    if args.quick:
        args.train, args.val, args.test, args.steps, args.eva_steps, args.seeds = 20_000, 2_000, 2_000, 2_500, 200, 1
    result = run(args)
    publish("bench_probe", "eva-preset linear probe on cached embeddings vs a raw torch loop and eva's trainer", result,
            table(result), quick=args.quick, readme=args.readme)
    return result


if __name__ == "__main__":
    main()
