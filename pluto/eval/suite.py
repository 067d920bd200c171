"""Evaluation suites: task configs, `run_suite` (the registry gate's score) and the single-folder `evaluate`.

A suite is a list of `TaskConfig`s evaluated under one `EvalConfig`. Linear-probe tasks run on
labeled image sets (a benchmark adapter, the generic folder adapter, or the resolution set derived
from a bundled slide); ABMIL, segmentation and HEST have their own entry points (abmil.py,
segmentation.py, hest.py) because their inputs (bags, token grids, expression) come from tiling.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
from torch import nn

from pluto.eval.baselines import mean_rgb_features, random_init_twin
from pluto.eval.benchmarks import ADAPTERS
from pluto.eval.eval_config import EvalConfig
from pluto.eval.embeddings import extract_embeddings, input_px, model_id, resolve_model, patch_size_of
from pluto.eval.images import ArrayImages, ImageFiles
from pluto.eval.labeled import DatasetLayoutError, LabeledImages, check_classes, read_labels_csv
from pluto.eval.linear_probe import PROBE_PRESETS, ProbeProtocol, cross_validated_probe, fit_linear_probe
from pluto.eval.records import EvalRecord, SuiteResult, suite_score
from pluto.eval.report import write_report

log = logging.getLogger(__name__)


def probe_protocol(cfg: EvalConfig) -> ProbeProtocol:
    if cfg.preset not in PROBE_PRESETS:
        raise DatasetLayoutError(f"eval.preset {cfg.preset!r} unknown; one of {sorted(PROBE_PRESETS)}")
    p = PROBE_PRESETS[cfg.preset]
    return replace(p, n_seeds=cfg.n_seeds) if cfg.n_seeds else p


def run_seeds(cfg: EvalConfig) -> tuple[int, ...]:
    return tuple(range(cfg.seed, cfg.seed + probe_protocol(cfg).n_seeds))


@dataclass(frozen=True)
class TaskConfig:
    """One task: which dataset (adapter name, "folder" or "resolution"), which split is scored, which metric."""

    name: str
    dataset: str
    root: str  # dataset root / images folder / slide path (resolution)
    split: str = "test"  # scored split; "cv" when the set has no splits
    metric: str = "balanced_accuracy"
    labels_csv: str | None = None  # folder adapter only
    classes: tuple[str, ...] | None = None  # expected classes; a mismatch is an error

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TaskConfig":
        d = dict(d)
        if d.get("classes") is not None:
            d["classes"] = tuple(d["classes"])
        return cls(**d)


@dataclass(frozen=True)
class SuiteConfig:
    tasks: tuple[TaskConfig, ...]
    eval: EvalConfig = field(default_factory=EvalConfig)


@dataclass(frozen=True)
class _TaskData:
    dataset: object  # ImageFiles | ArrayImages
    y: np.ndarray
    splits: np.ndarray | None
    groups: np.ndarray | None


def _load_task(task: TaskConfig, px: int) -> _TaskData:
    if task.dataset == "resolution":
        from pluto.eval.derived import resolution_set

        images, y, regions = resolution_set(Path(task.root), tile_px=px)
        return _TaskData(ArrayImages(images, px), y, None, regions)
    if task.dataset == "folder":
        if not task.labels_csv:
            raise DatasetLayoutError(f"task {task.name}: the folder adapter needs labels_csv")
        labeled = read_labels_csv(Path(task.root), Path(task.labels_csv), task.classes)
    elif task.dataset in ADAPTERS:
        labeled = ADAPTERS[task.dataset](Path(task.root))
        if not isinstance(labeled, LabeledImages):
            raise DatasetLayoutError(f"task {task.name}: {task.dataset} is not a linear-probe image set (see abmil/segmentation/hest)")
        if task.classes:
            check_classes(set(labeled.labels), task.classes, f"task {task.name}")
    else:
        raise DatasetLayoutError(f"task {task.name}: unknown dataset {task.dataset!r}; one of folder, resolution, {sorted(ADAPTERS)}")
    splits = np.array(labeled.splits) if labeled.splits else None
    groups = np.array(labeled.groups) if labeled.groups else None
    return _TaskData(ImageFiles(labeled.paths, px), labeled.label_ids, splits, groups)


def probe_values(x: np.ndarray, data: _TaskData, task: TaskConfig, cfg: EvalConfig) -> tuple[float, ...]:
    """Balanced accuracy per seed: on the scored split when the set has splits, else pooled out-of-fold."""
    protocol = probe_protocol(cfg)
    if data.splits is None or task.split == "cv":
        return tuple(cross_validated_probe(x, data.y, protocol, s, cfg.n_folds, cfg.device, data.groups) for s in run_seeds(cfg))
    present = set(data.splits)
    if task.split not in present or "train" not in present:
        raise DatasetLayoutError(f"task {task.name}: needs 'train' and {task.split!r} splits, found {sorted(present)}")
    # eva selects the checkpoint on 'val'; sets with only train/val (BACH, CRC) are scored on val too
    val_name = "val" if "val" in present else task.split
    tr, va, te = (data.splits == s for s in ("train", val_name, task.split))
    k = int(data.y.max() + 1)
    return tuple(fit_linear_probe(x[tr], data.y[tr], x[va], data.y[va], x[te], data.y[te], protocol, s, k, cfg.device).test_balanced_accuracy
                 for s in run_seeds(cfg))


def _records(task: TaskConfig, values, cfg: EvalConfig, mid: str, ps: int | None, mode: str) -> EvalRecord:
    return EvalRecord(task.name, task.dataset, task.split, task.metric, values, run_seeds(cfg), cfg.preset, mid, ps, mode)


def evaluate_task(model: nn.Module, task: TaskConfig, cfg: EvalConfig, baselines: bool = False,
                  on_progress: Callable[[int, int], None] | None = None) -> tuple[list[EvalRecord], dict[str, list[EvalRecord]]]:
    """Records of `model` for every embedding mode, plus (optionally) the two baselines' records."""
    px, ps, mid = input_px(model), patch_size_of(model, None), model_id(model)
    data = _load_task(task, px)
    cache = Path(cfg.cache_dir) if cfg.cache_dir else None
    emb = lambda m, mode: extract_embeddings(m, data.dataset, mode, cfg.batch_size, cfg.device, cache_dir=cache,  # noqa: E731
                                             num_workers=cfg.num_workers, on_progress=on_progress)
    records = [_records(task, probe_values(emb(model, mode), data, task, cfg), cfg, mid, ps, mode) for mode in cfg.modes]
    base: dict[str, list[EvalRecord]] = {}
    if baselines:
        base["mean_rgb"] = [_records(task, probe_values(mean_rgb_features(data.dataset), data, task, cfg), cfg, "mean_rgb", None, "mean_rgb")]
        twin = random_init_twin(model)
        base["random_init"] = [_records(task, probe_values(emb(twin, "cls"), data, task, cfg), cfg, model_id(twin), ps, "cls")]
    log.info("eval %s: %s", task.name, ", ".join(f"{r.embedding_mode} {r.mean:.3f}±{r.std:.3f}" for r in records))
    return records, base


def run_suite(model: nn.Module | str | Path, suite: SuiteConfig, on_progress: Callable[[int, int], None] | None = None) -> SuiteResult:
    """Evaluate every task; score = mean over tasks of the headline metric with CLS embeddings (PLUTO-4 §4.1)."""
    model = resolve_model(model)
    records = [r for t in suite.tasks for r in evaluate_task(model, t, suite.eval, on_progress=on_progress)[0]]
    headline = "cls" if "cls" in suite.eval.modes else suite.eval.modes[0]
    return SuiteResult(tuple(records), suite_score(records, headline), headline)


def evaluate(model: nn.Module | str | Path, tasks: list[TaskConfig] | tuple[TaskConfig, ...], cfg: EvalConfig, out_dir: Path,
             champion: list[EvalRecord] | None = None, on_progress: Callable[[int, int], None] | None = None) -> SuiteResult:
    """Run tasks with baselines and write the report (CSV, JSON records, HTML, PNG) under `out_dir`."""
    model = resolve_model(model)
    records: list[EvalRecord] = []
    base: dict[str, list[EvalRecord]] = {}
    for task in tasks:
        recs, b = evaluate_task(model, task, cfg, cfg.baselines, on_progress)
        records += recs
        for k, v in b.items():
            base.setdefault(k, []).extend(v)
    write_report(Path(out_dir), records, base, champion)
    headline = "cls" if "cls" in cfg.modes else cfg.modes[0]
    return SuiteResult(tuple(records), suite_score(records, headline), headline)


def load_records(path: Path) -> list[EvalRecord]:
    """Model records from a records.json written by `write_report` (e.g. the champion's)."""
    import json

    return [EvalRecord.from_dict(d) for d in json.loads(Path(path).read_text())["model"]]


def evaluate_folder(model: nn.Module | str | Path, images_dir: Path, labels_csv: Path, out_dir: Path, cfg: EvalConfig,
                    champion_records: Path | None = None, on_progress: Callable[[int, int], None] | None = None) -> SuiteResult:
    """`pluto evaluate` on one labeled folder: split 'test' when labels.csv has splits, else pooled stratified folds."""
    labeled = read_labels_csv(Path(images_dir), Path(labels_csv))
    task = TaskConfig(Path(images_dir).name or "folder", "folder", str(images_dir), "test" if labeled.splits else "cv",
                      labels_csv=str(labels_csv))
    champion = load_records(champion_records) if champion_records else None
    return evaluate(model, [task], cfg, Path(out_dir), champion, on_progress)
