"""Suite runners for the protocols beyond the linear probe: ABMIL (slide level), segmentation, HEST ridge.

Each runner takes (model, TaskConfig, EvalConfig, on_progress) and returns one `EvalRecord` per
embedding mode (segmentation: patch tokens only), with values per seed (HEST: per patient fold).
The preset (`EvalConfig.preset`, "eva" | "quick") and the task's dataset pick the protocol constants
(ABMIL and segmentation: the dataset's eva 0.4.5 config, `eva_protocol.EVA_TASKS`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from pluto.eval.abmil import MilProtocol, fit_abmil, mil_protocol
from pluto.eval.benchmarks import ADAPTERS, LabeledSlides, SegmentationSet
from pluto.eval.embeddings import extract_embeddings, input_px, model_id, patch_size_of
from pluto.eval.eval_config import EvalConfig
from pluto.eval.hest import hest_fold_pearson
from pluto.eval.images import ArrayImages, SlideTiles, resize_and_crop, resize_and_crop_mask
from pluto.eval.labeled import DatasetLayoutError, check_evaluable
from pluto.eval.linear_probe import fold_count, pooled_out_of_fold, training_folds
from pluto.eval.records import EvalRecord
from pluto.eval.segmentation import fit_segmentation, seg_protocol
from pluto.eval.task_config import TaskConfig

Progress = Callable[[int, int], None] | None


def embed(model: nn.Module, dataset, mode: str, cfg: EvalConfig, on_progress: Progress = None) -> np.ndarray:
    """`extract_embeddings` under the suite's settings (batch size, device, cache, workers)."""
    return extract_embeddings(model, dataset, mode, cfg.batch_size, cfg.device, cache_dir=Path(cfg.cache_dir) if cfg.cache_dir else None,
                              num_workers=cfg.num_workers, on_progress=on_progress)


def preset(presets: dict, cfg: EvalConfig, what: str):
    if cfg.preset not in presets:
        raise DatasetLayoutError(f"eval.preset {cfg.preset!r} has no {what} protocol; one of {sorted(presets)}")
    return presets[cfg.preset]


def seeds_for(cfg: EvalConfig, preset_seeds: int) -> tuple[int, ...]:
    return tuple(range(cfg.seed, cfg.seed + (cfg.n_seeds or preset_seeds)))


def split_masks(splits: np.ndarray, task: TaskConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) masks; eva selects the checkpoint on 'val', and sets with only train + the
    scored split (BACH, CRC: train/val) select on the scored split too."""
    present = set(splits.tolist())
    if task.split not in present or "train" not in present:
        raise DatasetLayoutError(f"task {task.name}: needs 'train' and {task.split!r} splits, found {sorted(present)}")
    val_name = "val" if "val" in present else task.split
    return splits == "train", splits == val_name, splits == task.split


def _record(task: TaskConfig, values, seeds, protocol: str, model: nn.Module, mode: str, incomplete: str | None = None,
            **extra) -> EvalRecord:
    """`incomplete`: the adapter's reason the copy is not the complete benchmark, kept in extra when set."""
    return EvalRecord(task.name, task.dataset, task.split, task.metric, tuple(values), tuple(seeds), protocol, model_id(model),
                      patch_size_of(model, None), mode, extra=extra | ({"incomplete": incomplete} if incomplete else {}))


def _bag_data(task: TaskConfig, px: int, protocol: MilProtocol):
    """(tile dataset, item indices per bag, bag labels, splits or None, groups or None, n_classes, incomplete)."""
    if task.dataset == "magnification_bags":
        from pluto.eval.derived import RESOLUTION_MPPS
        from pluto.eval.slide_bags import magnification_bags

        images, bags, y, groups = magnification_bags(Path(task.root), px)
        return ArrayImages(images, px), bags, y, None, groups, len(RESOLUTION_MPPS), None
    slides = ADAPTERS[task.dataset](Path(task.root)) if task.dataset in ADAPTERS else None
    if not isinstance(slides, LabeledSlides) or len(slides.tiles) != len(slides.paths):
        raise DatasetLayoutError(f"task {task.name}: protocol abmil needs a slide-level set with eva's tiles per slide "
                                 f"(panda, panda_small, camelyon16, camelyon16_small, magnification_bags), not {task.dataset!r}")
    import pandas as pd

    # eva's sampler yields foreground cells in one fixed shuffled order, so a slide's first pad_size tiles are
    # the sample it draws at max_samples = pad_size (the quick preset's smaller bags; the eva preset keeps all)
    grids = [t.iloc[: protocol.pad_size] for t in slides.tiles]
    starts = np.cumsum([0] + [len(g) for g in grids])
    bags = [np.arange(starts[i], starts[i + 1]) for i in range(len(grids))]
    return (SlideTiles(pd.concat(grids, ignore_index=True), px), bags, slides.label_ids, np.array(slides.splits), None,
            len(slides.classes), slides.incomplete)


def run_abmil(model: nn.Module, task: TaskConfig, cfg: EvalConfig, on_progress: Progress = None) -> list[EvalRecord]:
    """ABMIL on bags of frozen tile embeddings under the task's eva config (abmil.py); balanced accuracy per run."""
    protocol = mil_protocol(cfg.preset, task.dataset)
    seeds = seeds_for(cfg, protocol.n_seeds)
    dataset, bag_items, y, splits, groups, k, incomplete = _bag_data(task, input_px(model), protocol)
    # the same refusal as every probe set: a slide class under 2 bags or in one split only scores nothing
    check_evaluable([str(c) for c in y], None if splits is None or task.split == "cv" else [str(s) for s in splits],
                    f"task {task.name} ({task.root})")
    records = []
    for mode in cfg.modes:
        tiles = embed(model, dataset, mode, cfg, on_progress)
        bags = [tiles[i] for i in bag_items]
        pick = lambda mask: [bags[i] for i in np.flatnonzero(mask)]  # noqa: E731
        fit = lambda tr, va, te, s: fit_abmil(pick(tr), y[tr], pick(va), y[va], pick(te), y[te], protocol, s, k, cfg.device)  # noqa: E731
        pooled = splits is None or task.split == "cv"
        if pooled:
            values = [pooled_out_of_fold(lambda tr, va, te, s: fit(tr, va, te, s).test_pred, y, cfg.n_folds, seed, groups)
                      for seed in seeds]
        else:
            values = [fit(*split_masks(splits, task), seed).test_balanced_accuracy for seed in seeds]
        k = fold_count(y, cfg.n_folds, groups) if pooled else 0
        folds = {"folds": k, "train_folds": training_folds(k, True)} if pooled else {}  # ABMIL keeps its best-validation epoch
        records.append(_record(task, values, seeds, f"abmil/{protocol.name}", model, mode, incomplete, n_bags=len(bags),
                               eva_task=protocol.task, pad_size=protocol.pad_size, spread_over="folds" if pooled else "seeds",
                               **folds))
    return records


def run_segmentation(model: nn.Module, task: TaskConfig, cfg: EvalConfig, on_progress: Progress = None) -> list[EvalRecord]:
    """eva's ConvDecoderMS on frozen patch tokens under the set's eva config (segmentation.py); dice per run.

    Images and masks are resized on the shorter side and centre-cropped to the encoder's input size (eva's
    ResizeAndCrop, images.py); the checkpoint is chosen on 'val', or on the scored split when the set has
    none (MoNuSAC, as eva's monusac.yaml)."""
    protocol = seg_protocol(cfg.preset, task.dataset)
    seeds = seeds_for(cfg, protocol.n_seeds)
    seg = ADAPTERS[task.dataset](Path(task.root))
    if not isinstance(seg, SegmentationSet) or len(seg.classes) != protocol.label_classes:
        raise DatasetLayoutError(f"task {task.name}: {task.dataset} at {task.root} should be a segmentation set of "
                                 f"{protocol.label_classes} classes (eva's {protocol.task} config)")
    px = input_px(model)
    items = [seg.read(i) for i in range(len(seg.splits))]
    chw = torch.stack([resize_and_crop(rgb, px) for rgb, _ in items])
    masks = np.stack([resize_and_crop_mask(m, px) for _, m in items])
    tokens = embed(model, ArrayImages(chw.permute(0, 2, 3, 1).numpy(), px), "patch_tokens", cfg, on_progress)
    tr, va, te = split_masks(np.array(seg.splits), task)
    fits = [fit_segmentation(tokens[tr], masks[tr], tokens[va], masks[va], tokens[te], masks[te], protocol, s, cfg.device)
            for s in seeds]
    return [_record(task, [f.test_dice for f in fits], seeds, f"segmentation/{protocol.name}", model, "patch_tokens", seg.incomplete,
                    n_train=int(tr.sum()), n_test=int(te.sum()), eva_task=protocol.task,
                    best_epochs=[f.best_epoch for f in fits], spread_over="seeds")]


def run_hest(model: nn.Module, task: TaskConfig, cfg: EvalConfig, on_progress: Progress = None) -> list[EvalRecord]:
    """HEST-Benchmark: per patient fold, PCA-256 + ridge on log1p counts of the task's genes; values are folds."""
    from pluto.eval.hest_data import fold_samples, load_hest_task, read_sample

    hest = load_hest_task(Path(task.root))
    px = input_px(model)
    samples: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    features: dict[tuple[str, str, str], np.ndarray] = {}

    def arrays(rows, mode: str) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for _, patches, expr in rows:
            if (patches, expr) not in samples:
                samples[(patches, expr)] = read_sample(hest, patches, expr)
            images, counts = samples[(patches, expr)]
            if (patches, expr, mode) not in features:
                features[(patches, expr, mode)] = embed(model, ArrayImages(images, px), mode, cfg, on_progress)
            xs.append(features[(patches, expr, mode)]), ys.append(counts)
        return np.concatenate(xs), np.concatenate(ys)

    records = []
    for mode in cfg.modes:
        values = []
        for train_csv, test_csv in hest.folds:
            (trx, try_), (tex, tey) = arrays(fold_samples(train_csv), mode), arrays(fold_samples(test_csv), mode)
            values.append(hest_fold_pearson(trx, try_, tex, tey))
        records.append(_record(task, values, range(len(values)), "hest_ridge", model, mode, spread_over="patient folds",
                               n_genes=len(hest.genes), hest_task=hest.name))
    return records


RUNNERS = {"abmil": run_abmil, "segmentation": run_segmentation, "hest_ridge": run_hest}
