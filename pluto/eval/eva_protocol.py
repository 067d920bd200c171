"""eva 0.4.5's protocol constants, one entry per task config, for the probe, ABMIL and segmentation.

Each value is read off the vendored config named in `config` (`eva_configs/`, eva tag 0.4.5) at its
default (the `${oc.env:NAME, default}` fallback); `tests/eval/test_eva_protocol.py` parses those
YAML files and fails when any constant here differs, so the protocol cannot drift from eva's.
Plain dataclasses (no YAML parsing at run time) so evaluation imports with torch + timm alone.

Facts the configs leave implicit, from eva's and torch's code at the same versions:
- `weight_decay`: no config sets it, so it is `torch.optim.AdamW`'s default, 0.01.
- No config sets a scheduler, so eva's modules (`HeadModule`, `SemanticSegmentationModule`) use their
  default, torch's `ConstantLR` with its defaults: lr / 3 for the first 5 epochs, then lr.
- eva validates once per epoch; `patience` counts validation checks (epochs) without improvement on
  `monitor`, and `checkpoint_type: best` scores the test split with the best-validation weights.
- A binary task has one output and `BCEWithLogitsLoss` (MHIST, PCam, Camelyon16).
"""

from __future__ import annotations

from dataclasses import dataclass

TORCH_ADAMW_DEFAULT_WEIGHT_DECAY = 0.01
EVA_VERSION = "0.4.5"


@dataclass(frozen=True)
class EvaTask:
    config: str  # path under eva_configs/
    head: str  # "linear" | "abmil" | "segmentation"
    out_features: int  # 1 for binary tasks (one logit, BCE)
    criterion: str  # "cross_entropy" | "bce" | "dice"
    lr: float
    batch_size: int
    n_runs: int
    patience: int  # validation checks (epochs) without improvement before stopping
    monitor: str  # eva's metric name for checkpoint selection and early stopping
    max_steps: int | None = None  # linear probe and segmentation stop on steps ...
    max_epochs: int | None = None  # ... ABMIL on epochs
    weight_decay: float = TORCH_ADAMW_DEFAULT_WEIGHT_DECAY
    pad_size: int | None = None  # ABMIL: patches per slide (eva pads/samples every bag to this)
    ignore_index: int | None = None  # segmentation: label excluded from loss and metric (MoNuSAC "ambiguous")

    @property
    def binary(self) -> bool:
        return self.out_features == 1


def _probe(name: str, classes: int, patience: int, monitor: str = "val/MulticlassAccuracy") -> EvaTask:
    return EvaTask(f"classification/{name}.yaml", "linear", classes, "bce" if classes == 1 else "cross_entropy",
                   lr=3e-4, batch_size=256, n_runs=5, patience=patience, monitor=monitor, max_steps=12_500)


def _mil(name: str, classes: int, pad_size: int, monitor: str = "val/MulticlassAccuracy") -> EvaTask:
    return EvaTask(f"classification/{name}.yaml", "abmil", classes, "bce" if classes == 1 else "cross_entropy",
                   lr=1e-3, batch_size=32, n_runs=20, patience=20, monitor=monitor, max_epochs=100, pad_size=pad_size)


def _seg(name: str, classes: int, patience: int, ignore_index: int | None = None) -> EvaTask:
    return EvaTask(f"segmentation/{name}.yaml", "segmentation", classes, "dice", lr=2e-3, batch_size=64, n_runs=5,
                   patience=patience, monitor="val/MonaiDiceScore", max_steps=2000, ignore_index=ignore_index)


BINARY = "val/BinaryBalancedAccuracy"

# keyed by the project's dataset names (benchmarks.ADAPTERS)
EVA_TASKS: dict[str, EvaTask] = {
    "bach": _probe("bach", 4, 1250),
    "bracs": _probe("bracs", 7, 167),
    "breakhis": _probe("breakhis", 4, 500),
    "crc": _probe("crc", 9, 7),
    "gleason_arvaniti": _probe("gleason_arvaniti", 4, 42),
    "mhist": _probe("mhist", 1, 278, BINARY),
    "pcam": _probe("patch_camelyon", 1, 3, BINARY),
    "panda": _mil("panda", 6, 1000),
    "panda_small": _mil("panda_small", 6, 200),
    "camelyon16": _mil("camelyon16", 1, 10_000, BINARY),
    "camelyon16_small": _mil("camelyon16_small", 1, 1000, BINARY),
    "consep": _seg("consep", 5, 200),
    "monusac": _seg("monusac", 5, 100, ignore_index=5),
}
