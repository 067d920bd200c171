"""Evaluation results as value objects: one `EvalRecord` per (task, embedding mode), a `SuiteResult` per suite.

The record carries everything a reader needs to judge a number (DESIGN.md, "Evaluation record"):
per-seed values, mean and std over seeds, the protocol and eval-suite version, the model's weights
hash, patch size and embedding mode.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

# Bump when a protocol, split or metric changes: numbers are only comparable within one version.
# "2" (issue 13: eva 0.4.5's protocol by construction, constants from eva_protocol.EVA_TASKS):
# - linear probe per task as eva's offline configs: AdamW lr 3e-4 with weight decay 0.01, eva's ConstantLR
#   default, validation each epoch, early stopping with per-task patience, best checkpoint; MHIST and PCam
#   one logit with BCE. Pooled folds from scikit-learn, their count adapting to the smallest class; the
#   quick preset fits one bootstrap resample per run on a fixed split (its runs were identical before);
# - ABMIL as eva's configs per task (100 epochs, patience, best checkpoint), bags as eva's sampler serves them;
# - segmentation: ConvDecoderMS with eva's DiceLoss, best val checkpoint with patience, CoNSeP's GridSampler,
#   MoNuSAC's ignore_index;
# - images and masks resized on the shorter side and centre-cropped (eva's ResizeAndCrop), no longer squashed;
# - a task without a split scores eva's reported one (Gleason: val); degenerate labelled sets are refused;
# - every record says what its runs vary (`extra["spread_over"]`).
EVAL_SUITE_VERSION = "2"
SPREAD_OVER = ("seeds", "folds", "bootstrap", "patient folds")  # what differs between a record's runs


@dataclass(frozen=True)
class EvalRecord:
    task: str
    dataset: str
    split: str
    metric: str  # "balanced_accuracy" | "dice" | "pearson"
    values: tuple[float, ...]  # one per seed / run
    seeds: tuple[int, ...]
    protocol: str  # "<task protocol>/<preset>": "linear_probe/eva", "abmil/quick", "segmentation/eva", "hest_ridge"
    model_id: str  # sha256 of the encoder weights (or a baseline's name)
    patch_size: int | None
    embedding_mode: str  # "cls" | "cls+mean" | "patch_tokens" | "mean_rgb"
    suite_version: str = EVAL_SUITE_VERSION
    extra: dict = field(default_factory=dict)  # small JSON-able details: spread_over (one of SPREAD_OVER), n_train, ...

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(float(v) for v in self.values))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if len(self.values) != len(self.seeds) or not self.values:
            raise ValueError(f"{self.task}: need one value per seed, got {len(self.values)} values, {len(self.seeds)} seeds")

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        """Sample std over seeds (ddof=1; 0.0 for a single run)."""
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["values"], d["seeds"] = list(self.values), list(self.seeds)
        d["mean"], d["std"] = self.mean, self.std
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EvalRecord":
        keep = {k: v for k, v in d.items() if k not in {"mean", "std"}}
        keep["values"], keep["seeds"] = tuple(keep["values"]), tuple(keep["seeds"])
        return cls(**keep)


@dataclass(frozen=True)
class SuiteResult:
    """All records of one suite run; `score` (mean of headline metrics) feeds the registry gate, and the
    baselines' records (name -> records: "random_init", "mean_rgb") travel with it into the gate's table."""

    records: tuple[EvalRecord, ...]
    score: float
    headline_mode: str = "cls"
    baselines: dict[str, tuple[EvalRecord, ...]] = field(default_factory=dict)

    @property
    def max_seed_std(self) -> float:
        """Largest spread among headline records with more than one run: the gate's margin should be at least this."""
        return max((r.std for r in headline_records(self.records, self.headline_mode) if len(r.values) > 1), default=0.0)

    def to_dict(self) -> dict:
        return {"records": [r.to_dict() for r in self.records], "score": self.score, "headline_mode": self.headline_mode,
                "baselines": {k: [r.to_dict() for r in v] for k, v in self.baselines.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "SuiteResult":
        return cls(tuple(EvalRecord.from_dict(r) for r in d["records"]), float(d["score"]), d.get("headline_mode", "cls"),
                   {k: tuple(EvalRecord.from_dict(r) for r in v) for k, v in d.get("baselines", {}).items()})


def headline_records(records: tuple[EvalRecord, ...] | list[EvalRecord], mode: str = "cls") -> list[EvalRecord]:
    """One record per task: its `mode` record, or its only mode when the task has none in `mode`
    (segmentation runs on patch tokens alone)."""
    in_mode = {r.task for r in records if r.embedding_mode == mode}
    return [r for r in records if r.embedding_mode == mode or (r.task not in in_mode and r.embedding_mode == "patch_tokens")]


def suite_score(records: tuple[EvalRecord, ...] | list[EvalRecord], mode: str = "cls") -> float:
    """Mean over tasks of the headline metric (mean over seeds): `mode` records, patch tokens for segmentation."""
    vals = [r.mean for r in headline_records(records, mode)]
    if not vals:
        raise ValueError(f"no records with embedding mode {mode!r} to score")
    return float(np.mean(vals))
