"""Degenerate labelled sets are refused before any probe runs, naming the classes and their counts:
one image in a class, a class in one split only, one class in total. Never a silent "0.000 ± 0.000"."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pluto.eval.eval_config import EvalConfig
from pluto.eval.labeled import DatasetLayoutError, check_evaluable, count_table


def _folder(tmp_path: Path, crc_patches: Path, rows: list[tuple[str, str, str | None]]) -> tuple[Path, Path]:
    """Real CRC patches copied into `tmp_path/img` as (source class, label, split) rows."""
    img = tmp_path / "img"
    img.mkdir()
    by_class: dict[str, list[Path]] = {}
    for p in sorted((crc_patches / "images").glob("*.png")):
        by_class.setdefault(p.name.split("-")[0], []).append(p)
    lines = ["filename,label" + (",split" if rows[0][2] else "")]
    for i, (source, label, split) in enumerate(rows):
        name = f"{i}.png"
        shutil.copy(by_class[source][i % 4], img / name)
        lines.append(f"{name},{label}" + (f",{split}" if split else ""))
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    return img, tmp_path / "labels.csv"


def test_cli_one_image_per_class_exits_non_zero_with_the_class_counts(tmp_path, crc_patches):
    """The issue's reproduction through the real command: one image per class plus a class the bundled set lacks."""
    rows = [(c, c, None) for c in ("ADI", "DEB", "LYM", "MUC")] + [("TUM", "FOREIGN", None)]
    img, labels = _folder(tmp_path, crc_patches, rows)
    run = subprocess.run([sys.executable, "-m", "pluto.cli", "evaluate", "--model", "pluto_tiny", "--images", str(img),
                          "--labels", str(labels), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, env={**os.environ, "COLUMNS": "200", "PLUTO_EVAL__CACHE_DIR": str(tmp_path / "c")})
    text = run.stdout + run.stderr
    assert run.returncode != 0, text
    assert "fewer than 2 images: ['ADI', 'DEB', 'FOREIGN', 'LYM', 'MUC']" in text and str(labels) in text
    assert all(f"{c}  " in text for c in ("ADI", "FOREIGN")) and "0.000" not in text
    assert not (tmp_path / "out" / "records.json").exists()


@pytest.mark.parametrize(
    "rows, problem",
    [
        ([("ADI", "ADI", "train"), ("ADI", "ADI", "test"), ("DEB", "DEB", "train"), ("DEB", "DEB", "test"),
          ("LYM", "LYM", "train"), ("LYM", "LYM", "train")],
         r"class\(es\) only in train, never scored \(no val/test item\): \['LYM'\]"),
        ([("ADI", "ADI", None), ("ADI", "ADI", None), ("DEB", "ADI", None)],
         r"1 class\(es\) in total \['ADI'\]: a classifier needs at least 2"),
    ],
    ids=["train_only_class", "one_class"],
)
def test_folder_sets_degenerate_for_scoring_are_refused(tmp_path, crc_patches, rows, problem):
    from pluto.eval.suite import evaluate_folder

    img, labels = _folder(tmp_path, crc_patches, rows)
    with pytest.raises(DatasetLayoutError, match=problem) as exc:
        evaluate_folder("pluto_tiny", img, labels, tmp_path / "out", EvalConfig(cache_dir=None))
    assert str(labels) in str(exc.value) and "total" in str(exc.value)


def test_a_class_missing_from_train_shows_the_count_table():
    labels, splits = ["a", "a", "b", "b"], ["train", "test", "test", "test"]
    with pytest.raises(DatasetLayoutError, match=r"class\(es\) in no train item: \['b'\]") as exc:
        check_evaluable(labels, splits, "set")
    assert count_table(labels, splits) in str(exc.value)
    assert count_table(labels, splits).splitlines() == ["  class  train  test  total", "  a          1     1      2",
                                                        "  b          0     2      2"]
    check_evaluable(labels, None, "set")  # pooled folds: both classes have 2 images, nothing degenerate


def test_benchmark_adapters_sets_pass_the_same_check(tmp_path, monkeypatch):
    """A benchmark adapter's set (here an eva container set) is checked where every task loads, not in each adapter."""
    from pluto.eval import suite
    from pluto.eval.benchmarks import EvaImageSet
    from pluto.eval.task_config import TaskConfig

    fake = EvaImageSet("fake", tmp_path, (), np.array([0, 0, 1, 1, 2]), ("train", "val", "train", "val", "train"),
                       ("normal", "tumor", "necrosis"), ())
    monkeypatch.setitem(suite.ADAPTERS, "fake", lambda root: fake)
    with pytest.raises(DatasetLayoutError, match=r"task t \(.*\): degenerate .*fewer than 2 images: \['necrosis'\]"):
        suite._load_task(TaskConfig("t", "fake", str(tmp_path), "val"), 224)
    with pytest.raises(DatasetLayoutError, match=r"fewer than 2 images: \['necrosis'\]\n") as exc:  # pooled folds: no split clause
        suite._load_task(TaskConfig("t", "fake", str(tmp_path), "cv"), 224)
    assert "only in train" not in str(exc.value) and "train" not in str(exc.value).splitlines()[1]
