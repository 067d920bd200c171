"""Does pretraining learn? Probe the teacher at checkpoints against its random-init twin and mean RGB.

Pretraining data: 224-px tiles of the bundled H&E, cut at 0.5 and 1.0 um/px on a grid and kept when
their mean HSV saturation says tissue (`pluto.eval.derived.saturation`): the 20 MoNuSeg regions
(`regions_monuseg/images`, 1000 x 1000, their um/px from `mpp_overrides.csv`, area-resampled) and
the CMU slide (read through `pluto.slides.read_tile`). The tiles go to an image folder, and the run
is the project's own: `pluto.train.trainer.train` with the arch's bound recipe
(`pluto.train.recipes.recipe_config`; `data_kind="images"`, and as the folder mixes two resolutions
`image_mpp` stays unknown), checkpointing at 1/3, 2/3 and the end.

Evaluation (pluto.eval, CLS embeddings): on every task, every encoder is scored on the same folds,
`repeats` x `folds`-fold stratified (`stratified_folds`, seeds 0..repeats-1; region-grouped on the
magnification set): the quick linear probe (`pooled_out_of_fold` around `fit_linear_probe`, as
`cross_validated_probe`: fold f tests and, as the L-BFGS fit selects nothing on validation, every other fold trains) and a
cosine kNN (`knn_accuracy`, k=5, trained on every other fold). Encoders: the teacher at step 0 (the
run's own initialisation, rebuilt under the run's seed) and at each checkpoint ("trained"), the
random-init twin (`pluto.eval.baselines.random_init_twin` of the trained model under the run's seed), mean RGB
(`mean_rgb_features`), and with `--init-from` the parent model a warm-started run starts from. The twin is one
draw (the run's seed, as the run's own step 0); `--twin-draws N` also scores N-1 draws under the next init seeds (`random_init_draws`: their
min-max is a band on the curve), since on 32 images the draw alone moves the CRC probe by several points.
Tasks: the 32 bundled CRC patches (8 classes, 4 each), magnification (0.5 / 1 / 2 um/px reads of the
CMU slide, `resolution_set`) and QC labels (tissue / background / pen tiles, `bundled_qc_label_set`).

Statistics: a row's mean and std are over the repeats (each repeat's score pools its out-of-fold
predictions, the suite's convention). A comparison trained - random_init is paired per fold (the
same test items, the same training items): its mean over the repeats x folds differences, and a
standard error from the corrected repeated k-fold cross-validation test (Bouckaert & Frank 2004,
PAKDD, "Evaluating the replicability of significance tests for comparing learning algorithms",
after Nadeau & Bengio 2003, Machine Learning 52:239-281): var(d) x (1/n + n_test/n_train), since
folds that share training items are correlated and the plain var(d)/n understates the spread.

`--diagnostic-crc-ssl` pretrains on the 32 CRC patch images themselves (no labels) and scores CRC
only: it separates the SSL code from data scarcity (a working DINO/iBOT should beat random init on
the very images it trained on). A diagnostic, not a result: train and test images are the same.

    python -m bench.bench_learning --quick                      # CPU, pluto_tiny (< 12 min on 2 cores)
    python -m bench.bench_learning --quick --diagnostic-crc-ssl
    python -m bench.bench_learning --arch pluto_4s --device cuda --steps 300 --batch 32      # on a GPU
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from bench.common import REPO, machine, write_section

log = logging.getLogger("bench.bench_learning")

NAME = "bench_learning"
TITLE = "does pretraining learn? trained teacher vs random-init twin and mean RGB"
DATA = REPO.parent / "shared" / "data"
TILE_MPPS = (0.5, 1.0)
TILE_PX = 224
KNN_K = 5  # TrainConfig.knn_k: the trainer's kNN monitor
MONITOR_WINDOW = 20  # steps averaged into the monitors reported at a checkpoint
RESULTS = REPO / "bench" / "results"
DRAW = "random_init_draw"  # the twin re-drawn under init seed 1..N-1: how much the draw alone moves a score


@dataclass(frozen=True)
class Task:
    name: str
    dataset: object  # pluto.eval ImageFiles / ArrayImages (uint8 CHW items at the encoder's input size)
    y: np.ndarray
    groups: np.ndarray | None = None


# ---------------------------------------------------------------- pretraining data


def _keep(rgb: np.ndarray) -> bool:
    from pluto.eval.derived import MIN_TISSUE_SATURATION, saturation

    return saturation(rgb) >= MIN_TISSUE_SATURATION


def _origins(side: int, tile: int) -> list[int]:
    """Tile origins along one axis: round(side / tile) tiles spread evenly (one centred tile when it fits once)."""
    n = int(round(side / tile))
    if side < tile:
        return []
    if n <= 1:
        return [(side - tile) // 2]
    return [int(round(v)) for v in np.linspace(0, side - tile, n)]


def region_tiles(image: Path, mpp: float, out: Path) -> int:
    """Tiles of one unpyramided region (MoNuSeg) at each TILE_MPPS, area-resampled from its um/px (read with
    Pillow: pluto.slides refuses some of these files, PackBits strips, having no decoder proven equal for them)."""
    import cv2
    from PIL import Image

    with Image.open(image) as im:
        rgb = np.asarray(im.convert("RGB"))
    n = 0
    for target in TILE_MPPS:
        scale = mpp / target
        small = cv2.resize(rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        for y in _origins(small.shape[0], TILE_PX):
            for x in _origins(small.shape[1], TILE_PX):
                tile = small[y : y + TILE_PX, x : x + TILE_PX]
                if _keep(tile):
                    Image.fromarray(tile).save(out / f"mpp{target:g}" / f"{image.stem}_{x}_{y}.png")
                    n += 1
    return n


def slide_tiles(slide: Path, out: Path) -> int:
    """Grid tiles of a slide at each TILE_MPPS through pluto.slides (the reader the tiling stage uses), tissue only."""
    from PIL import Image

    from pluto.slides import get_handle, read_tile

    handle = get_handle(slide)
    info = handle.info
    n = 0
    for target in TILE_MPPS:
        fov = int(round(TILE_PX * target / info.mpp))  # level-0 px per tile
        for y in _origins(info.height, fov):
            for x in _origins(info.width, fov):
                tile = read_tile(handle, x, y, target, TILE_PX)
                if _keep(tile):
                    Image.fromarray(tile).save(out / f"mpp{target:g}" / f"{slide.stem}_{x}_{y}.png")
                    n += 1
    return n


def cut_pretraining_tiles(out: Path, data: Path = DATA) -> dict[str, int]:
    """The bundled unlabelled H&E as tile files under `out/mpp<m>/`; tiles per source. The MoNuSeg regions
    carry no um/px: theirs comes from `mpp_overrides.csv`, as `pluto ingest --mpp-overrides` takes it."""
    import csv

    for m in TILE_MPPS:
        (out / f"mpp{m:g}").mkdir(parents=True, exist_ok=True)
    regions = data / "regions_monuseg"
    with (regions / "mpp_overrides.csv").open(newline="") as f:
        mpp = {r["slide"]: float(r["mpp"]) for r in csv.DictReader(f)}
    counts = {"regions_monuseg": sum(region_tiles(p, mpp[p.name], out) for p in sorted((regions / "images").glob("*.tif")))}
    slide = data / "wsi" / "CMU-1-Small-Region.svs"
    counts[slide.name] = slide_tiles(slide, out)
    return counts


# ---------------------------------------------------------------- training


def train_config(args, data: Path, run_dir: Path, image_mpp: float | None):
    """The arch's bound recipe (`pluto.train.recipes.recipe_config`: ssl, batch, drop path, all cited) with this run's
    data, length, seed, checkpoints and, when given, batch; `recipe_overrides` lists what departs from the recipe."""
    from pluto.train.recipes import recipe_config

    every = max(1, args.steps // args.checkpoints)
    batch = {"batch_per_gpu": args.batch, "global_batch": args.batch} if args.batch else {}
    sets = parse_sets(getattr(args, "set", None) or [])
    return recipe_config(
        args.arch, data=str(data), data_kind="images", image_mpp=image_mpp, run_dir=str(run_dir), steps=args.steps,
        seed=args.seed, precision="bf16" if args.device == "cuda" else "fp32", num_workers=args.workers, ckpt_every=every,
        keep_ckpts=args.checkpoints + 1, log_every=max(1, args.steps // 20), tracking_uri="", init_from=args.init_from or "",
        **batch, **sets,
    )


def parse_sets(items: list[str]) -> dict:
    """`--set ssl.n_prototypes=256 --set drop_path_rate=0.1` -> nested TrainConfig overrides (values as Python literals,
    else strings): a recipe experiment without editing the recipe; `recipe_overrides` records what it changed."""
    import ast

    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--set wants KEY=VALUE, got {item!r}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        if key.startswith("ssl."):
            out.setdefault("ssl", {})[key[4:]] = value
        else:
            out[key] = value
    return out


def initial_teacher(cfg) -> torch.nn.Module:
    """The teacher backbone a run starts from: built as `train` builds it (seed, then the objective), warm start applied."""
    from pluto.train.trainer import build_objective, warm_start

    torch.manual_seed(cfg.seed)
    obj = build_objective(replace(cfg, compile=False), torch.device("cpu"))
    if cfg.init_from:
        warm_start(obj, cfg.init_from, cfg.arch)
    return obj.teacher["backbone"].eval()


def checkpoint_teachers(cfg) -> dict[int, torch.nn.Module]:
    """Teacher backbone at every kept checkpoint of the run, by step."""
    import timm

    import pluto.models  # noqa: F401 - registers the pluto_* architectures
    from pluto.train.checkpoint import list_checkpoints, load_checkpoint

    out = {}
    for path in list_checkpoints(Path(cfg.run_dir) / "checkpoints"):
        meta, state = load_checkpoint(path)
        model = timm.create_model(cfg.arch, pretrained=False, init_values=cfg.layerscale)  # as built: its twin re-draws alike
        model.load_state_dict({k.removeprefix("backbone."): v for k, v in state["teacher"].items() if k.startswith("backbone.")})
        out[meta.step] = model.eval()
    return dict(sorted(out.items()))


def cpu_s() -> float:
    """CPU seconds of this process and its finished children (the DataLoader workers)."""
    import resource

    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def pretrain(cfg) -> dict:
    """Run the trainer; wall and CPU time, and the loss and collapse monitors (pluto.ssl.collapse) at each checkpoint,
    averaged over the last MONITOR_WINDOW steps before it (one step's batch of 8 is noisy)."""
    from pluto.train.trainer import train

    t0, cpu0 = time.perf_counter(), cpu_s()
    result = train(cfg)
    keys = ("loss", "dino", "ibot", "teacher_entropy", "teacher_kl_uniform", "cls_std", "cls_rank")
    window = min(MONITOR_WINDOW, cfg.ckpt_every)
    monitors = {}
    for s in sorted({*range(cfg.ckpt_every, result.step + 1, cfg.ckpt_every), result.step}):
        recent = [h for h in result.history if s - window < h["step"] <= s]
        monitors[s] = {k: round(float(np.mean([h[k] for h in recent if k in h])), 4) for k in keys if any(k in h for h in recent)}
    return {"train_s": round(time.perf_counter() - t0, 1), "train_cpu_s": round(cpu_s() - cpu0, 1),
            "steps": result.step, "collapse": result.collapse, "monitors": monitors}


# ---------------------------------------------------------------- evaluation


def load_tasks(names: tuple[str, ...], px: int, data: Path = DATA) -> list[Task]:
    from pluto.eval import ArrayImages, ImageFiles, read_labels_csv

    tasks = []
    for name in names:
        if name == "crc_tissue":
            crc = data / "patches_crc_val_he_7k"
            labeled = read_labels_csv(crc, crc / "labels.csv")
            tasks.append(Task(name, ImageFiles(labeled.paths, px), labeled.label_ids))
        elif name == "magnification":
            from pluto.eval.derived import resolution_set

            images, y, regions = resolution_set(data / "wsi" / "CMU-1-Small-Region.svs", tile_px=px)
            tasks.append(Task(name, ArrayImages(images, px), y, regions))
        elif name == "qc_labels":
            from pluto.eval.derived import bundled_qc_label_set

            qc = bundled_qc_label_set(data / "wsi" / "CMU-1-Small-Region.svs", data / "artifacts" / "labels.csv", tile_px=px)
            tasks.append(Task(name, ArrayImages(qc.images, px), qc.labels))
        else:
            raise ValueError(f"unknown task {name!r}")
    return tasks


def fold_plans(task: Task, repeats: int, n_folds: int) -> list[np.ndarray]:
    """Fold index per item for each repeat (seed 0..repeats-1): the folds `pooled_out_of_fold` deals."""
    from pluto.eval.linear_probe import stratified_folds

    return [stratified_folds(task.y, n_folds, seed, task.groups) for seed in range(repeats)]


def plans_digest(plans: list[np.ndarray]) -> str:
    import hashlib

    return hashlib.sha256(np.stack(plans).astype(np.int64).tobytes()).hexdigest()[:16]


def score(x: np.ndarray, task: Task, plans: list[np.ndarray], n_folds: int) -> dict[str, dict]:
    """Per metric: `pooled` (one score per repeat), `folds` (repeats x folds, per-fold scores) and the
    mean n_test / n_train of the folds (for the corrected variance)."""
    from pluto.eval.linear_probe import knn_accuracy, pooled_out_of_fold, probe_protocol_for

    y = task.y
    k = int(y.max() + 1)
    protocol = replace(probe_protocol_for("folder", "quick"), bootstrap=False)  # as cross_validated_probe
    probe_pooled, probe_folds, probe_ratio = [], [], []
    knn_pooled, knn_folds, knn_ratio = [], [], []
    for seed, folds in enumerate(plans):
        per_fold = []

        def fit_fold(tr, va, te, s):
            from pluto.eval.linear_probe import fit_linear_probe

            fit = fit_linear_probe(x[tr], y[tr], x[va], y[va], x[te], y[te], protocol, s, k)
            per_fold.append(fit.test_balanced_accuracy)
            probe_ratio.append(te.sum() / tr.sum())
            return fit.test_pred

        probe_pooled.append(pooled_out_of_fold(fit_fold, y, n_folds, seed, task.groups, protocol.selects_on_validation))
        probe_folds.append(per_fold)
        accs, sizes = [], []
        for f in range(int(folds.max()) + 1):
            te = folds == f
            accs.append(knn_accuracy(x[~te], y[~te], x[te], y[te], k=KNN_K))
            sizes.append(te.sum())
            knn_ratio.append(te.sum() / (~te).sum())
        knn_pooled.append(float(np.dot(accs, sizes) / np.sum(sizes)))  # pooled out-of-fold accuracy
        knn_folds.append(accs)
    return {
        "linear_probe_balanced_accuracy": {"pooled": probe_pooled, "folds": probe_folds,
                                           "test_train_ratio": float(np.mean(probe_ratio))},
        "knn_accuracy": {"pooled": knn_pooled, "folds": knn_folds, "test_train_ratio": float(np.mean(knn_ratio))},
    }


def corrected_comparison(a: dict, b: dict) -> dict:
    """Paired a - b over the same repeats x folds; SE from the corrected repeated k-fold CV variance."""
    d = (np.asarray(a["folds"], float) - np.asarray(b["folds"], float)).ravel()
    n = d.size
    se = float(np.std(d, ddof=1) * math.sqrt(1 / n + a["test_train_ratio"])) if n > 1 else math.nan
    naive = float(np.std(d, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return {"diff_mean": float(d.mean()), "diff_se": se, "n": n, "naive_se": naive}


def embeddings(model, task: Task, args) -> np.ndarray:
    from pluto.eval import extract_embeddings

    return extract_embeddings(model, task.dataset, "cls", 64, args.device)


def evaluate_all(encoders: list[tuple[str, int | None, object]], tasks: list[Task], args) -> tuple[list[dict], dict]:
    """Rows for every (encoder, task, metric) and the raw scores keyed (encoder, steps, task, metric).

    Encoders with identical weights (`model_id`: the step-0 teacher is usually the twin itself) are scored once."""
    from pluto.eval import mean_rgb_features, model_id

    rows, raw = [], {}
    for task in tasks:
        plans = fold_plans(task, args.repeats, args.folds)
        digest = plans_digest(plans)
        done: dict[str, dict] = {}
        for who, steps, model in encoders:
            key = "mean_rgb" if model is None else model_id(model)
            if key not in done:
                x = mean_rgb_features(task.dataset) if model is None else embeddings(model, task, args)
                done[key] = score(x, task, plans, args.folds)
            for metric, s in done[key].items():
                raw[(who, steps, task.name, metric)] = s
                v = np.asarray(s["pooled"])
                seed = {"init_seed": int(who.removeprefix(DRAW))} if who.startswith(DRAW) else {}
                rows.append({"encoder": who.rstrip("0123456789") if seed else who, **seed, "task": task.name, "metric": metric,
                             "mean": round(float(v.mean()), 4),
                             "std": round(float(v.std(ddof=1)), 4) if v.size > 1 else None, "n": int(v.size), "steps": steps,
                             "folds": args.folds, "folds_sha": digest, "weights": key[:16],
                             "fold_values": [[round(float(a), 6) for a in f] for f in s["folds"]],
                             "test_train_ratio": round(s["test_train_ratio"], 6)})
        log.info("evaluated %s", task.name)
    return rows, raw


def gate_floor_se(a: dict, b: dict, task: str, n_folds: int) -> float:
    """The SE the registry gate's quality floor (`pluto.registry.floor.check_floor`) puts on the same two encoders'
    per-repeat pooled scores, for comparison: it applies the Nadeau-Bengio term to the pooled scores' variance."""
    from pluto.eval.records import EvalRecord
    from pluto.registry.floor import check_floor

    def record(s: dict, who: str) -> dict:
        seeds = tuple(range(len(s["pooled"])))
        return EvalRecord(task, "folder", "cv", "balanced_accuracy", tuple(s["pooled"]), seeds, "linear_probe/quick", who, None,
                          "cls", extra={"spread_over": "folds", "folds": n_folds}).to_dict()

    return check_floor({"records": [record(a, "trained")], "baselines": {"random_init": [record(b, "random_init")]}}).diff_se


def init_draws(rows: list[dict], seed: int) -> list[dict]:
    """Per task and metric, the random-init score over init seeds (the twin is the run's seed, then each draw): the
    spread a trained model's gain over one twin must be read against."""
    out = []
    for twin in (r for r in rows if r["encoder"] == "random_init"):
        draws = [twin] + sorted((r for r in rows if r["encoder"] == DRAW and (r["task"], r["metric"]) == (twin["task"], twin["metric"])),
                                key=lambda r: r["init_seed"])
        if len(draws) > 1:
            means = [d["mean"] for d in draws]
            out.append({"task": twin["task"], "metric": twin["metric"], "init_seeds": [seed] + [d["init_seed"] for d in draws[1:]],
                        "means": means, "mean": round(float(np.mean(means)), 4), "std": round(float(np.std(means, ddof=1)), 4)})
    return out


def comparisons(raw: dict, tasks: list[Task], trained_steps: list[int], n_folds: int) -> list[dict]:
    out = []
    for task in tasks:
        for metric in ("linear_probe_balanced_accuracy", "knn_accuracy"):
            twin = raw[("random_init", 0, task.name, metric)]
            for steps in trained_steps:
                trained = raw[("trained", steps, task.name, metric)]
                c = corrected_comparison(trained, twin) | {"gate_floor_se": gate_floor_se(trained, twin, task.name, n_folds)}
                out.append({"task": task.name, "metric": metric, "a": "trained", "b": "random_init", "steps": steps,
                            **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in c.items()},
                            "beats_2se": bool(c["diff_mean"] > 2 * c["diff_se"])})
    return out


# ---------------------------------------------------------------- the run


def uncommitted_library_files() -> list[str]:
    """Files of pluto/ that differ from HEAD: in a shared checkout the run's code is HEAD plus these."""
    import subprocess

    out = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "pluto"], capture_output=True, text=True)
    return sorted(line[3:] for line in out.stdout.splitlines() if line.strip())


def run(args) -> dict:
    from pluto.eval import model_id, random_init_twin
    from pluto.eval.embeddings import input_px

    if args.threads:
        torch.set_num_threads(args.threads)
    t0, cpu0 = time.perf_counter(), cpu_s()
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S%z")
    with tempfile.TemporaryDirectory(prefix="bench_learning-") as tmp:
        tmp = Path(tmp)
        if args.diagnostic_crc_ssl:
            data, counts, image_mpp = DATA / "patches_crc_val_he_7k" / "images", {"patches_crc_val_he_7k": 32}, 0.5
        else:
            data, image_mpp = tmp / "tiles", None
            counts = cut_pretraining_tiles(data)
        log.info("pretraining tiles: %s", counts)
        cfg = train_config(args, data, tmp / "run", image_mpp)
        start = initial_teacher(cfg)
        train_info = pretrain(cfg)
        trained = {0: start, **checkpoint_teachers(cfg)}
    final = trained[max(trained)]
    twin = random_init_twin(final, args.seed)  # the issue's twin: same architecture and seed at step 0
    encoders = [("trained", s, m) for s, m in trained.items()]
    encoders += [("random_init", 0, twin), ("mean_rgb", None, None)]
    encoders += [(f"{DRAW}{seed}", None, random_init_twin(final, seed)) for seed in range(args.seed + 1, args.seed + args.twin_draws)]
    if args.init_from:
        from pluto.models import load_model

        encoders.append(("parent", None, load_model(args.init_from).eval()))
    tasks = load_tasks(("crc_tissue",) if args.diagnostic_crc_ssl else tuple(args.tasks), input_px(final))
    t_eval = time.perf_counter()
    rows, raw = evaluate_all(encoders, tasks, args)
    return {
        "bench": NAME, "mode": "diagnostic_crc_ssl" if args.diagnostic_crc_ssl else "result", "quick": args.quick,
        "created": started, "machine": {**machine(), "device": args.device, "torch_threads": torch.get_num_threads(),
                                        "torch": torch.__version__,
                                        "uncommitted_library_files": uncommitted_library_files()},
        "config": {"arch": cfg.arch, "recipe_overrides": list(cfg.recipe_overrides), "set": list(args.set or []),
                   "ssl": cfg.ssl.to_dict(), "steps": cfg.steps,
                   "batch": cfg.global_batch, "seed": cfg.seed, "checkpoint_steps": sorted(trained),
                   "step0_is_twin": model_id(trained[0]) == model_id(twin), "init_from": cfg.init_from or None,
                   "repeats": args.repeats, "folds": args.folds, "knn_k": KNN_K, "twin_draws": args.twin_draws, "embedding": "cls",
                   "probe": "quick (pooled out-of-fold)", "tile_mpps": list(TILE_MPPS) if not args.diagnostic_crc_ssl else [0.5],
                   "tile_px": TILE_PX,
                   "pretraining_tiles": counts},
        "train": train_info, "eval_s": round(time.perf_counter() - t_eval, 1), "total_s": round(time.perf_counter() - t0, 1),
        "total_cpu_s": round(cpu_s() - cpu0, 1),
        "rows": rows, "comparisons": comparisons(raw, tasks, sorted(trained), args.folds), "random_init_draws": init_draws(rows, args.seed),
    }


# ---------------------------------------------------------------- reporting


def table(result: dict) -> str:
    steps = result["config"]["checkpoint_steps"]
    final = max(steps)
    by = {(r["encoder"], r["steps"], r["task"], r["metric"]): r for r in result["rows"]}
    comp = {(c["task"], c["metric"]): c for c in result["comparisons"] if c["steps"] == final}
    has_parent = any(r["encoder"] == "parent" for r in result["rows"])
    draws = {(d["task"], d["metric"]): d for d in result.get("random_init_draws", [])}
    n_draws = len(next(iter(draws.values()))["means"]) if draws else 0
    head = ["task", "metric", "mean RGB", "random init"] + ([f"random init, {n_draws} draws (min-max)"] if draws else [])
    head += (["parent"] if has_parent else []) + [f"step {s}" for s in steps]
    head += [f"step {final} - random init ± SE", "> 2 SE", "gate floor's SE"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    def fmt(r: dict | None) -> str:
        return "" if r is None else f"{r['mean']:.3f}" + (f" ± {r['std']:.3f}" if r["std"] is not None else "")

    for (task, metric), c in comp.items():
        cells = [task, metric.replace("_", " "), fmt(by.get(("mean_rgb", None, task, metric))),
                 fmt(by.get(("random_init", 0, task, metric)))]
        d = draws.get((task, metric))
        cells += [f"{fmt(d)} ({min(d['means']):.3f}-{max(d['means']):.3f})" if d else ""] if draws else []
        cells += [fmt(by.get(("parent", None, task, metric)))] if has_parent else []
        cells += [fmt(by.get(("trained", s, task, metric))) for s in steps]
        cells += [f"{c['diff_mean']:+.3f} ± {c['diff_se']:.3f}", "yes" if c["beats_2se"] else "no", f"{c['gate_floor_se']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def describe(result: dict) -> str:
    c, m, t = result["config"], result["machine"], result["train"]
    tiles = ", ".join(f"{k} {v}" for k, v in c["pretraining_tiles"].items())
    steps = sorted(int(s) for s in t["monitors"])
    mon = "; ".join(f"step {s}: " + ", ".join(f"{k} {v:g}" for k, v in t["monitors"].get(str(s), t["monitors"].get(s, {})).items())
                    for s in steps)
    twin = ("the same weights as step 0 (`random_init_twin` re-draws the run's own initialisation)" if c.get("step0_is_twin")
            else "not the run's step-0 weights (another draw of the same initialisation)")
    return "\n".join([
        f"- Run: {c['arch']} with its recipe (`pluto.train.recipes`; set over it: "
        f"{', '.join(c.get('set') or c['recipe_overrides']) or 'nothing'}), {c['steps']} steps x batch {c['batch']}, seed {c['seed']}; "
        f"pretraining tiles ({c['tile_px']} px at {'/'.join(f'{v:g}' for v in c['tile_mpps'])} um/px): {tiles}.",
        f"- Machine: {m['cpu']} ({m['device']}, {m['torch_threads']} torch thread(s), {m['cores']} cores shared with other jobs, "
        f"load {m['load_1min']} at start), torch {m['torch']}, git {m['git_sha']}"
        + (f" plus uncommitted changes to {', '.join(m['uncommitted_library_files'])}" if m.get("uncommitted_library_files") else "")
        + f", {result['created']}.",
        f"- Time: training {t['train_s']:.0f} s wall ({t['train_cpu_s']:.0f} s CPU with the loader workers), evaluation "
        f"{result['eval_s']:.0f} s, total {result['total_s']:.0f} s wall, {result['total_cpu_s']:.0f} s CPU.",
        f"- Probes: CLS embeddings, {c['repeats']} x {c['folds']}-fold stratified, the same folds for every encoder; quick "
        f"linear probe (balanced accuracy) and {c['knn_k']}-NN (accuracy). Random init: {twin}.",
        f"- Loss and collapse monitors (mean of the {MONITOR_WINDOW} steps before each checkpoint): {mon or 'n/a'}; "
        f"collapse verdict at the end: {t['collapse'] or 'none'}.",
    ])


def readme_body(results: dict[str, dict]) -> str:
    parts = []
    res = results.get("result")
    if res:
        crc = next((c for c in res["comparisons"] if c["task"] == "crc_tissue" and c["metric"] == "linear_probe_balanced_accuracy"
                    and c["steps"] == max(res["config"]["checkpoint_steps"])), None)
        verdict = ("" if crc is None else
                   f"\n\nTarget (issue 12, `--quick`, CRC linear probe): diff_mean > 2 x diff_se: {crc['diff_mean']:+.3f} vs "
                   f"2 x {crc['diff_se']:.3f} = {2 * crc['diff_se']:.3f}: **{'met' if crc['beats_2se'] else 'not met'}** "
                   f"(against 2 x the gate floor's SE, {2 * crc['gate_floor_se']:.3f}: "
                   f"{'met' if crc['diff_mean'] > 2 * crc['gate_floor_se'] else 'not met'}).")
        parts.append(f"### Result{' (--quick)' if res['quick'] else ''}\n\n{describe(res)}\n\n{table(res)}{verdict}\n\n"
                     f"Learning curve: `{res.get('png', '')}`.")
    diag = results.get("diagnostic_crc_ssl")
    if diag:
        parts.append("### Diagnostic, not a result: SSL on the 32 CRC patches themselves (`--diagnostic-crc-ssl`)\n\n"
                     "Pretrained on the very images it is probed on (no labels), to tell the SSL code from data scarcity: a "
                     f"working DINO/iBOT should beat random init here.\n\n{describe(diag)}\n\n{table(diag)}")
    experiments = RESULTS / f"{NAME}-experiments.md"
    if experiments.is_file():  # recipe experiments, hand-summarised from `--set` runs (kept across regenerations)
        parts.append(experiments.read_text().strip())
    parts.append(
        "Statistics: rows are mean ± std over the repeats (each repeat pools its out-of-fold predictions). The difference "
        "is paired per fold (repeats x folds pairs, each on the same test items after training on the same items), its SE "
        "the corrected repeated k-fold cross-validation one, sd(d) x sqrt(1/n + n_test/n_train) (Bouckaert & Frank 2004, "
        "after Nadeau & Bengio 2003): folds that share training items are correlated, and the plain sd/sqrt(n) "
        "understates the spread. On 32 images the n_test/n_train term dominates (8/24 for the quick probe, which trains "
        "on every fold but the test fold; 8/16 before 2026-12-06, when it held out a validation fold it never used) and "
        "more repeats cannot shrink it. \"gate floor's SE\" is what "
        "`pluto.registry.floor.check_floor` gives for the same two encoders from the per-repeat pooled scores (its Nadeau-"
        "Bengio term applied to the pooled scores' variance), for comparison. Random init is "
        "`pluto.eval.baselines.random_init_twin` of the trained model under the run's seed, which re-draws the run's own "
        "step 0 (same architecture and seed); the registry gate's twin is the draw under seed 0 whatever the run's seed. "
        "The draws under other init seeds show how far the draw alone moves a score.\n\n"
        "GPU figures pending: no GPU was lent to this task (`python -m bench.bench_learning --arch pluto_4s --device cuda "
        "--batch 32 ...` on one).")
    return "\n\n".join(parts)


def latest_results(results_dir: Path = RESULTS) -> dict[str, dict]:
    """The newest JSON of each mode in bench/results (by its `created` time)."""
    out: dict[str, dict] = {}
    for path in results_dir.glob(f"{NAME}-*.json"):
        try:
            r = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if r.get("bench") == NAME and r.get("created", "") > out.get(r.get("mode"), {}).get("created", ""):
            out[r["mode"]] = r
    return out


def learning_curve(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in result["rows"]))
    metrics = ("linear_probe_balanced_accuracy", "knn_accuracy")
    fig, axes = plt.subplots(len(metrics), len(tasks), figsize=(4.2 * len(tasks), 3.4 * len(metrics)), squeeze=False)
    for j, task in enumerate(tasks):
        for i, metric in enumerate(metrics):
            ax = axes[i][j]
            rows = [r for r in result["rows"] if r["task"] == task and r["metric"] == metric]
            tr = sorted((r for r in rows if r["encoder"] == "trained"), key=lambda r: r["steps"])
            ax.errorbar([r["steps"] for r in tr], [r["mean"] for r in tr], yerr=[r["std"] or 0 for r in tr], marker="o",
                        capsize=3, label="trained (teacher)")
            for r, style in ((next((r for r in rows if r["encoder"] == "random_init"), None), "--"),
                             (next((r for r in rows if r["encoder"] == "mean_rgb"), None), ":"),
                             (next((r for r in rows if r["encoder"] == "parent"), None), "-.")):
                if r:
                    ax.axhline(r["mean"], linestyle=style, color="grey" if r["encoder"] != "parent" else "green", label=r["encoder"])
            d = next((d for d in result.get("random_init_draws", []) if (d["task"], d["metric"]) == (task, metric)), None)
            if d:
                ax.axhspan(min(d["means"]), max(d["means"]), color="grey", alpha=0.15, label=f"random init, {len(d['means'])} draws")
            ax.set_title(f"{task}: {metric.replace('_', ' ')}", fontsize=9)
            ax.set_xlabel("optimizer steps")
            if j == 0:
                ax.set_ylabel("score (mean ± std over repeats)")
            ax.legend(fontsize=7)
    tag = "diagnostic: SSL on the CRC patches" if result["mode"] != "result" else "pretrained on bundled H&E tiles"
    fig.suptitle(f"{NAME} ({tag}), {result['config']['arch']}, git {result['machine']['git_sha']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="CPU: pluto_tiny (its recipe: the demo's), 450 steps, 10 x 4 folds (< 12 min on 2 cores)")
    ap.add_argument("--diagnostic-crc-ssl", action="store_true", help="pretrain on the CRC patches themselves (a diagnostic)")
    ap.add_argument("--arch", default="pluto_tiny")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (quick: 450, else 1500)")
    ap.add_argument("--batch", type=int, default=None, help="tiles per step, one process (default: the arch's recipe)")
    ap.add_argument("--checkpoints", type=int, default=3, help="evaluated checkpoints after step 0")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--twin-draws", type=int, default=5, help="random-init draws scored (init seeds s..s+N-1 for --seed s; s is the twin)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--tasks", nargs="+", default=["crc_tissue", "magnification", "qc_labels"])
    ap.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a recipe value for an experiment (ssl.teacher_temp=0.04); repeatable")
    ap.add_argument("--init-from", default="", help="warm start from a saved pluto model (its rows: 'parent')")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers (multi-crop off the training thread)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default). 1: on a shared 2-core VM two "
                    "threads oversubscribed the cores and cost ~10x the CPU time per step")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/bench_learning[-mode]-<sha>.json)")
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite the bench/README.md section")
    args = ap.parse_args(argv)
    if args.steps is None:
        args.steps = 450 if args.quick else 1500
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    result = run(args)
    mode = "" if result["mode"] == "result" else "diagnostic-"
    out = args.out or RESULTS / f"{NAME}-{mode}{'quick-' if args.quick else ''}{result['machine']['git_sha']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    png = learning_curve(result, out.with_suffix(".png"))
    result["png"] = str(png.relative_to(REPO)) if png.is_relative_to(REPO) else str(png)
    out.write_text(json.dumps(result, indent=2))
    if not args.no_readme:
        write_section(NAME, TITLE, readme_body(latest_results(out.parent) | {result["mode"]: result}))
    print(table(result))  # noqa: T201 - a benchmark script reports on stdout
    return result


if __name__ == "__main__":
    main()
