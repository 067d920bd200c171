"""Evaluation suites: task configs, `run_suite` (the registry gate's score) and the single-folder `evaluate`.

A suite is a list of `TaskConfig`s evaluated under one `EvalConfig`; a task names its dataset,
scored split, metric and protocol. Protocols: "linear_probe" (labeled image sets: a benchmark
adapter, the generic folder adapter, or the resolution / QC-label sets derived from a bundled slide), "abmil"
(slide-level: PANDA bags from a tissue grid, or magnification bags derived from a bundled slide),
"segmentation" (CoNSeP / MoNuSAC, patch tokens + eva's ConvDecoderWithImage) and "hest_ridge"
(HEST-Benchmark task folder). Every record carries protocol/preset, eval-suite version, patch
size and embedding mode, and all land in one results table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
from torch import nn

from pluto.errors import ConfigError
from pluto.eval.baselines import mean_rgb_features, random_init_twin
from pluto.eval import task_runners
from pluto.eval.benchmarks import ADAPTERS, EvaImageSet
from pluto.eval.eval_config import EvalConfig
from pluto.eval.embeddings import input_px, model_id, resolve_model, patch_size_of
from pluto.eval.images import ArrayImages, ImageFiles
from pluto.eval.labeled import DatasetLayoutError, LabeledImages, check_classes, check_evaluable, read_labels_csv
from pluto.eval.linear_probe import PROBE_PRESETS, ProbeProtocol, cross_validated_probe, fit_linear_probe, fold_count, probe_protocol_for, training_folds
from pluto.eval.records import EvalRecord, SuiteResult, suite_score
from pluto.eval.report import write_report
from pluto.eval.task_config import TaskConfig

log = logging.getLogger(__name__)


def probe_protocol(cfg: EvalConfig) -> ProbeProtocol:
    return task_runners.preset(PROBE_PRESETS, cfg, "linear-probe")


def run_seeds(cfg: EvalConfig) -> tuple[int, ...]:
    return task_runners.seeds_for(cfg, probe_protocol(cfg).n_seeds)


@dataclass(frozen=True)
class SuiteConfig:
    tasks: tuple[TaskConfig, ...]
    eval: EvalConfig = field(default_factory=EvalConfig)


def load_suite_tasks(path: Path) -> tuple[TaskConfig, ...]:
    """Tasks of a suite file: JSON or YAML, a list of task dicts or {"tasks": [...]}; relative roots resolve
    against the file's folder."""
    import json

    path = Path(path)
    if not path.is_file():
        raise DatasetLayoutError(f"{path}: suite file not found")
    if path.suffix == ".json":
        raw = json.loads(path.read_text())
    else:
        import yaml

        raw = yaml.safe_load(path.read_text())
    tasks = raw.get("tasks") if isinstance(raw, dict) else raw
    if not isinstance(tasks, list) or not tasks:
        raise DatasetLayoutError(f"{path}: expected a non-empty list of tasks (or {{'tasks': [...]}})")
    out = []
    for t in tasks:
        t = dict(t)
        for key in ("root", "labels_csv"):
            if t.get(key) and not Path(t[key]).is_absolute():
                t[key] = str(path.parent / t[key])
        out.append(TaskConfig.from_dict(t))
    return tuple(out)


@dataclass(frozen=True)
class _TaskData:
    dataset: object  # ImageFiles | ArrayImages
    y: np.ndarray
    splits: np.ndarray | None
    groups: np.ndarray | None
    classes: tuple[str, ...]  # names of the label ids in y
    incomplete: str | None = None  # a benchmark copy that is not the complete benchmark: why (records' extra)


def _load_task(task: TaskConfig, px: int) -> _TaskData:
    """The task's images and labels, refused (with its class counts) when degenerate for the way it is scored."""
    data = _task_data(task, px)
    splits = data.splits if data.splits is not None and task.split != "cv" else None
    check_evaluable(np.asarray(data.classes)[data.y].tolist(), None if splits is None else splits.tolist(),
                    f"task {task.name} ({task.labels_csv or task.root})")
    return data


def _task_data(task: TaskConfig, px: int) -> _TaskData:
    if task.dataset == "resolution":
        from pluto.eval.derived import RESOLUTION_MPPS, resolution_set

        images, y, regions = resolution_set(Path(task.root), tile_px=px)
        return _TaskData(ArrayImages(images, px), y, None, regions, tuple(f"{m:g} um/px" for m in RESOLUTION_MPPS))
    if task.dataset == "qc_labels":
        from pluto.eval.derived import bundled_qc_label_set

        qc_set = bundled_qc_label_set(Path(task.root), Path(task.labels_csv) if task.labels_csv else None, tile_px=px)
        if task.classes:
            check_classes(set(qc_set.classes), task.classes, f"task {task.name}")
        return _TaskData(ArrayImages(qc_set.images, px), qc_set.labels, qc_set.splits, None, qc_set.classes)
    if task.dataset == "folder":
        if not task.labels_csv:
            raise DatasetLayoutError(f"task {task.name}: the folder adapter needs labels_csv")
        labeled = read_labels_csv(Path(task.root), Path(task.labels_csv), task.classes)
    elif task.dataset in ADAPTERS:
        labeled = ADAPTERS[task.dataset](Path(task.root))
        if isinstance(labeled, EvaImageSet):
            return _TaskData(labeled.dataset(px), labeled.label_ids, np.array(labeled.splits), None, labeled.classes,
                             labeled.incomplete)
        if not isinstance(labeled, LabeledImages):
            raise DatasetLayoutError(f"task {task.name}: {task.dataset} is not a linear-probe image set; "
                                     "use protocol abmil / segmentation / hest_ridge")
        if task.classes:
            check_classes(set(labeled.labels), task.classes, f"task {task.name}")
    else:
        raise DatasetLayoutError(f"task {task.name}: unknown dataset {task.dataset!r}; one of folder, resolution, qc_labels, {sorted(ADAPTERS)}")
    splits = np.array(labeled.splits) if labeled.splits else None
    groups = np.array(labeled.groups) if labeled.groups else None
    return _TaskData(ImageFiles(labeled.paths, px), labeled.label_ids, splits, groups, labeled.classes, labeled.incomplete)


def probe_values(x: np.ndarray, data: _TaskData, task: TaskConfig, cfg: EvalConfig) -> tuple[float, ...]:
    """Balanced accuracy per seed: on the scored split when the set has splits, else pooled out-of-fold."""
    protocol = probe_protocol_for(task.dataset, cfg.preset)
    if data.splits is None or task.split == "cv":
        return tuple(cross_validated_probe(x, data.y, protocol, s, cfg.n_folds, cfg.device, data.groups) for s in run_seeds(cfg))
    tr, va, te = task_runners.split_masks(data.splits, task)
    k = int(data.y.max() + 1)
    return tuple(fit_linear_probe(x[tr], data.y[tr], x[va], data.y[va], x[te], data.y[te], protocol, s, k, cfg.device).test_balanced_accuracy
                 for s in run_seeds(cfg))


def spread_over(data: _TaskData, task: TaskConfig, cfg: EvalConfig) -> str:
    """What differs between a probe record's runs (records.SPREAD_OVER; see linear_probe's "Seeding"): pooled
    folds are re-dealt per seed; on a fixed split the quick preset fits a bootstrap resample per seed, and
    the eva preset's seed draws the head's init and the shuffle order."""
    if data.splits is None or task.split == "cv":
        return "folds"
    return "bootstrap" if probe_protocol_for(task.dataset, cfg.preset).bootstrap else "seeds"


def _records(task: TaskConfig, data: _TaskData, x: np.ndarray, cfg: EvalConfig, mid: str, ps: int | None, mode: str) -> EvalRecord:
    spread = spread_over(data, task, cfg)
    folds = {}
    if spread == "folds":
        k = fold_count(data.y, cfg.n_folds, data.groups)
        folds = {"folds": k, "train_folds": training_folds(k, probe_protocol_for(task.dataset, cfg.preset).selects_on_validation)}
    return EvalRecord(task.name, task.dataset, task.split, task.metric, probe_values(x, data, task, cfg), run_seeds(cfg),
                      f"linear_probe/{cfg.preset}", mid, ps, mode, extra={"spread_over": spread, **folds,
                      **({"incomplete": data.incomplete} if data.incomplete else {})})


def _twin_record(model: nn.Module, task: TaskConfig, data: _TaskData, cfg: EvalConfig, ps: int | None, emb) -> EvalRecord:
    """The random-init twin's record: per run, the mean over `cfg.twin_draws` draws (init seeds 0..N-1), each scored on
    the same folds/seeds; the draws' own values stay in `extra`."""
    draws, twin_ids = [], []
    for seed in range(max(1, cfg.twin_draws)):  # one twin in memory at a time
        twin = random_init_twin(model, seed)
        twin_ids.append(model_id(twin))
        draws.append(_records(task, data, emb(twin, "cls"), cfg, twin_ids[-1], ps, "cls"))
    first = draws[0]
    return replace(first, values=tuple(np.mean([d.values for d in draws], axis=0)), model_id=twin_ids[0],
                   extra={**first.extra, "init_seeds": list(range(len(draws))), "draw_model_ids": twin_ids,
                          "draw_values": [list(d.values) for d in draws]})


def evaluate_task(model: nn.Module, task: TaskConfig, cfg: EvalConfig, baselines: bool = False,
                  on_progress: Callable[[int, int], None] | None = None) -> tuple[list[EvalRecord], dict[str, list[EvalRecord]]]:
    """Records of `model` for every embedding mode, plus (optionally, linear-probe tasks) the two baselines' records."""
    if task.protocol != "linear_probe":
        records = task_runners.RUNNERS[task.protocol](model, task, cfg, on_progress)
        log.info("eval %s: %s", task.name, ", ".join(f"{r.embedding_mode} {r.mean:.3f}±{r.std:.3f}" for r in records))
        return records, {}
    px, ps, mid = input_px(model), patch_size_of(model, None), model_id(model)
    data = _load_task(task, px)
    emb = lambda m, mode: task_runners.embed(m, data.dataset, mode, cfg, on_progress)  # noqa: E731
    records = [_records(task, data, emb(model, mode), cfg, mid, ps, mode) for mode in cfg.modes]
    base: dict[str, list[EvalRecord]] = {}
    if baselines:
        base["mean_rgb"] = [_records(task, data, mean_rgb_features(data.dataset), cfg, "mean_rgb", None, "mean_rgb")]
        base["random_init"] = [_twin_record(model, task, data, cfg, ps, emb)]
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
    return SuiteResult(tuple(records), suite_score(records, headline), headline, {k: tuple(v) for k, v in base.items()})


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


def evaluate_inputs(model: nn.Module | str | Path, out_dir: Path, cfg: EvalConfig, suite_file: Path | None = None,
                    images_dir: Path | None = None, labels_csv: Path | None = None, champion_records: Path | None = None,
                    on_progress: Callable[[int, int], None] | None = None) -> SuiteResult:
    """`pluto evaluate`: a suite file (any protocols) or one labeled folder (images + labels.csv), never both."""
    if (suite_file is None) == (images_dir is None and labels_csv is None) or (images_dir is None) != (labels_csv is None):
        raise ConfigError("pluto evaluate: give either --suite FILE, or both --images DIR and --labels CSV")
    if suite_file is None:
        return evaluate_folder(model, images_dir, labels_csv, out_dir, cfg, champion_records, on_progress)
    champion = load_records(champion_records) if champion_records else None
    return evaluate(model, load_suite_tasks(suite_file), cfg, Path(out_dir), champion, on_progress)
