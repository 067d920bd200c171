"""`TaskConfig`: one evaluation task of a suite (dataset, scored split, metric, protocol)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pluto.eval.labeled import DatasetLayoutError

PROTOCOL_METRICS = {"linear_probe": "balanced_accuracy", "abmil": "balanced_accuracy", "segmentation": "dice",
                    "hest_ridge": "pearson"}


@dataclass(frozen=True)
class TaskConfig:
    """One task. `dataset`: an adapter name (benchmarks.ADAPTERS), "folder", "resolution", "qc_labels" or
    "magnification_bags" (derived from the slide at `root`; qc_labels adds the artifact images of `labels_csv`). `split`: the scored split, "cv" for pooled folds when the set has
    none; unset, a benchmark scores the split eva reports (benchmarks.EVA_REPORTED_SPLIT: Gleason's val), any other set
    "test". `metric` defaults to the protocol's headline (balanced accuracy, dice, Pearson)."""

    name: str
    dataset: str
    root: str  # dataset root / images folder / slide path (derived sets) / HEST task folder
    split: str = ""  # "" = eva's reported split for a benchmark, else "test"
    metric: str = ""
    labels_csv: str | None = None  # folder adapter; qc_labels: the artifacts' labels.csv (optional)
    classes: tuple[str, ...] | None = None  # expected classes; a mismatch is an error
    protocol: str = "linear_probe"  # one of PROTOCOL_METRICS

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOL_METRICS:
            raise DatasetLayoutError(f"task {self.name}: unknown protocol {self.protocol!r}; one of {sorted(PROTOCOL_METRICS)}")
        expected = PROTOCOL_METRICS[self.protocol]
        if self.metric and self.metric != expected:
            raise DatasetLayoutError(f"task {self.name}: protocol {self.protocol} reports {expected}, not {self.metric!r}")
        object.__setattr__(self, "metric", expected)
        if not self.split:
            from pluto.eval.benchmarks import EVA_REPORTED_SPLIT

            object.__setattr__(self, "split", EVA_REPORTED_SPLIT.get(self.dataset, "test"))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TaskConfig":
        d = dict(d)
        if d.get("classes") is not None:
            d["classes"] = tuple(d["classes"])
        return cls(**d)
