"""Labeled image sets: the generic "folder + labels.csv" adapter and the checks every adapter shares.

labels.csv columns: filename (relative to the images folder), label, optional split
(train / val / test, empty = none). A set without splits is evaluated with stratified folds.
Every set a linear probe scores passes `check_evaluable` first: a degenerate set is an error that
shows each class's counts, never a silent 0.000.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pluto.errors import PlutoError
from pluto.paths import PathEscapeError, safe_join

SPLITS = ("train", "val", "test")
MIN_PER_CLASS = 2  # one item to learn a class from and one to score it on


class DatasetLayoutError(PlutoError):
    """A benchmark copy is missing, incomplete or laid out differently than expected; names what is missing."""


@dataclass(frozen=True)
class LabeledImages:
    name: str
    root: Path
    paths: tuple[Path, ...]
    labels: tuple[str, ...]
    classes: tuple[str, ...]  # label order: label_ids index into this
    splits: tuple[str, ...] | None = None  # per item, one of SPLITS
    groups: tuple[str, ...] | None = None  # per item patient / slide id, for group-aware folds
    incomplete: str | None = None  # why this is not the complete benchmark ("32 of 7,180 images (val)"); None = complete

    def __post_init__(self) -> None:
        if not self.paths:
            raise DatasetLayoutError(f"{self.root}: {self.name} has no images")
        check_classes(set(self.labels), self.classes, f"{self.name} at {self.root}")
        if self.splits:
            check_train_covers(self.labels, self.splits, f"{self.name} at {self.root}")

    @property
    def label_ids(self) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[x] for x in self.labels], dtype=np.int64)

    def to_dict(self) -> dict:
        return {"name": self.name, "root": str(self.root), "paths": [str(p) for p in self.paths], "labels": list(self.labels),
                "classes": list(self.classes), "splits": list(self.splits) if self.splits else None,
                "groups": list(self.groups) if self.groups else None}

    @classmethod
    def from_dict(cls, d: dict) -> "LabeledImages":
        opt = lambda k: tuple(d[k]) if d.get(k) else None  # noqa: E731
        return cls(d["name"], Path(d["root"]), tuple(Path(p) for p in d["paths"]), tuple(d["labels"]),
                   tuple(d["classes"]), opt("splits"), opt("groups"))


def check_classes(found: set[str], expected: tuple[str, ...] | list[str], where: str) -> None:
    """Raise naming the labels that are not in `expected`, and the expected classes that have no item."""
    extra, missing = sorted(found - set(expected)), sorted(set(expected) - found)
    if extra or missing:
        parts = ([f"unexpected class(es) {extra}"] if extra else []) + ([f"no items for class(es) {missing}"] if missing else [])
        raise DatasetLayoutError(f"{where}: {'; '.join(parts)} (expected {list(expected)})")


def check_train_covers(labels: tuple[str, ...], splits: tuple[str, ...], where: str) -> None:
    """Raise naming the classes that occur in val/test but never in train (as EVA: a probe cannot
    predict a class it was never trained on, so such a split would be scored as silently wrong)."""
    train = {lab for lab, s in zip(labels, splits) if s == "train"}
    unseen = {s: sorted({lab for lab, sp in zip(labels, splits) if sp == s} - train) for s in SPLITS[1:]}
    unseen = {s: c for s, c in unseen.items() if c}
    if train and unseen:
        raise DatasetLayoutError(f"{where}: class(es) with no train item: " + "; ".join(f"{s} has {c}" for s, c in unseen.items())
                                 + "\n" + count_table(labels, splits))


def count_table(labels, splits=None) -> str:
    """Items per class, per split and in total, one aligned line per class (what a degenerate-set error shows)."""
    total = Counter(labels)
    per_split = Counter(zip(labels, splits)) if splits is not None else Counter()
    cols = [s for s in SPLITS if any(k[1] == s for k in per_split)]
    rows = [["class", *cols, "total"]] + [[c, *(str(per_split[(c, s)]) for s in cols), str(n)] for c, n in sorted(total.items())]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  " + "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
                     for r in rows)


def check_evaluable(labels, splits, where: str) -> None:
    """Raise, with every class's counts, when a probe score on this set would mean nothing: fewer than
    2 classes, a class with fewer than MIN_PER_CLASS items (nothing to both train and score it on),
    or, with splits, a class in one split only (never in train: the probe cannot predict it; only
    in train: it is never scored). `labels`: class names per item; `splits`: per item, or None for folds."""
    total = Counter(labels)
    problems = [] if len(total) >= 2 else [f"{len(total)} class(es) in total {sorted(total)}: a classifier needs at least 2"]
    few = sorted(c for c, n in total.items() if n < MIN_PER_CLASS)
    problems += [f"class(es) with fewer than {MIN_PER_CLASS} images: {few}"] if few else []
    if splits is not None:
        seen: dict[str, set[str]] = {}
        for lab, s in zip(labels, splits):
            seen.setdefault(lab, set()).add(s)
        no_train = sorted(c for c, s in seen.items() if "train" not in s)
        train_only = sorted(c for c, s in seen.items() if s == {"train"})
        problems += [f"class(es) in no train item: {no_train}"] if no_train else []
        problems += [f"class(es) only in train, never scored (no val/test item): {train_only}"] if train_only else []
    if problems:
        raise DatasetLayoutError(f"{where}: degenerate labelled set: {'; '.join(problems)}\n{count_table(labels, splits)}")


def require(root: Path, *relative: str) -> None:
    """Raise DatasetLayoutError listing every expected path missing under `root`."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: dataset folder not found")
    missing = [r for r in relative if not (root / r).exists()]
    if missing:
        raise DatasetLayoutError(f"{root}: expected {', '.join(repr(m) for m in missing)} (layout of a local copy of this benchmark)")


def inside(root: Path, relative: str) -> Path:
    """`root / relative`, refusing paths that escape `root` (.., absolute, symlinks out)."""
    try:
        return safe_join(root, relative)
    except PathEscapeError as exc:
        raise DatasetLayoutError(f"{relative}: path escapes the images folder {exc.root}") from exc


def read_labels_csv(images_dir: Path, labels_csv: Path, classes: tuple[str, ...] | None = None,
                    name: str = "labeled_folder") -> LabeledImages:
    """The generic adapter: images under `images_dir`, rows `filename,label[,split]` in `labels_csv`."""
    images_dir, labels_csv = Path(images_dir), Path(labels_csv)
    if not labels_csv.is_file():
        raise DatasetLayoutError(f"{labels_csv}: labels file not found")
    require(images_dir)
    with labels_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"filename", "label"} <= set(rows[0]):
        raise DatasetLayoutError(f"{labels_csv}: needs columns filename,label[,split]")
    paths = tuple(inside(images_dir, r["filename"]) for r in rows)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DatasetLayoutError(f"{labels_csv}: {len(missing)} listed image(s) missing, e.g. {missing[0]}")
    labels = tuple(r["label"].strip() for r in rows)
    raw_splits = [(r.get("split") or "").strip() for r in rows]
    bad = sorted({s for s in raw_splits if s and s not in SPLITS})
    if bad:
        raise DatasetLayoutError(f"{labels_csv}: unknown split value(s) {bad}; use {SPLITS} or leave empty")
    if any(raw_splits) and not all(raw_splits):
        raise DatasetLayoutError(f"{labels_csv}: split is set for some rows but not all")
    splits = tuple(raw_splits) if all(raw_splits) else None
    return LabeledImages(name, images_dir, paths, labels, tuple(classes) if classes else tuple(sorted(set(labels))), splits)
