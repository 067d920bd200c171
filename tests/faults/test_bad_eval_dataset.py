"""Eval datasets whose classes do not line up are refused with DatasetLayoutError naming the classes:
a val/test class never seen in train (EVA: a linear probe cannot predict it, so the score would be
silently wrong), labels outside or missing from the declared class list, unknown splits."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pluto.eval.labeled import DatasetLayoutError, LabeledImages, read_labels_csv


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    d = tmp_path / "images"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return d


def _labels(tmp_path: Path, rows: list[tuple[str, str, str]]) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text("filename,label,split\n" + "".join(f"{f},{lab},{s}\n" for f, lab, s in rows))
    return path


BASE = [("0.png", "tumor", "train"), ("1.png", "normal", "train"), ("2.png", "tumor", "test"), ("3.png", "normal", "test")]


def test_consistent_set_loads(images: Path, tmp_path: Path) -> None:
    ds = read_labels_csv(images, _labels(tmp_path, BASE))
    assert ds.classes == ("normal", "tumor") and ds.splits.count("train") == 2


def test_train_class_absent_from_test_is_allowed(images: Path, tmp_path: Path) -> None:
    rows = BASE + [("4.png", "stroma", "train")]
    ds = read_labels_csv(images, _labels(tmp_path, rows))
    assert ds.classes == ("normal", "stroma", "tumor")  # a valid layout; scoring it is refused (test_degenerate_sets)


@pytest.mark.parametrize("split", ["test", "val"])
def test_eval_class_absent_from_train_is_an_error_naming_it(images: Path, tmp_path: Path, split: str) -> None:
    rows = BASE + [("4.png", "stroma", split), ("5.png", "necrosis", split)]
    with pytest.raises(DatasetLayoutError, match=rf"class\(es\) with no train item: {split} has \['necrosis', 'stroma'\]") as exc:
        read_labels_csv(images, _labels(tmp_path, rows))
    assert re.search(r"\n  class +train .*\n  necrosis +0 ", str(exc.value))  # with every class's count per split


def test_adapters_building_split_sets_get_the_same_check(images: Path) -> None:
    paths = tuple(images / f"{i}.png" for i in range(3))
    with pytest.raises(DatasetLayoutError, match=r"crc at .*: class\(es\) with no train item: val has \['TUM'\]"):
        LabeledImages("crc", images, paths, ("ADI", "ADI", "TUM"), ("ADI", "TUM"), ("train", "val", "val"))


def test_labels_outside_or_missing_from_the_declared_classes(images: Path, tmp_path: Path) -> None:
    labels = _labels(tmp_path, BASE + [("4.png", "Tumour", "train")])
    with pytest.raises(DatasetLayoutError, match=r"unexpected class\(es\) \['Tumour'\]; no items for class\(es\) \['stroma'\]"):
        read_labels_csv(images, labels, classes=("normal", "tumor", "stroma"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("filename,label,split\n0.png,tumor,training\n", r"unknown split value\(s\) \['training'\]"),
        ("filename,label,split\n0.png,tumor,train\n1.png,normal,\n", "split is set for some rows but not all"),
        ("file,class\n0.png,tumor\n", "needs columns filename,label"),
        ("", "needs columns filename,label"),
        ("filename,label\n9.png,tumor\n", r"1 listed image\(s\) missing, e.g. .*9\.png"),
    ],
    ids=["unknown_split", "partial_split", "wrong_columns", "empty", "missing_image"],
)
def test_malformed_labels_csv_names_the_file(images: Path, tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(DatasetLayoutError, match=message) as exc:
        read_labels_csv(images, path)
    assert "labels.csv" in str(exc.value)
