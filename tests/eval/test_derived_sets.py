"""The tissue / background / pen set derived from QC masks of the bundled slide and the artifact images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pluto.eval.derived import QC_CLASSES, QCLabelRule, artifact_sources, qc_label_set, slide_qc_source
from pluto.eval.labeled import DatasetLayoutError

RULE = QCLabelRule()
# Background vs tissue on mean RGB, 12 + 12 test tiles: chance is 0.5 with a binomial SD of
# sqrt(0.25 / 24) = 0.10; 0.9 (at most ~2 errors) is 4 SDs above it (P ~ 2e-5 under chance). Glass is
# near-white and grey, H&E tissue pink-purple: colour alone should separate them, so a set whose
# labels disagreed with the pixels (a labelling or reading bug) would fall below.
MIN_BACKGROUND_VS_TISSUE_BACC = 0.9


@pytest.fixture(scope="module")
def sources(cmu_svs, artifact_images):
    """The QC stage run on the slide (masks.npz via load_qc) plus the artifact images with their masks."""
    return [slide_qc_source(cmu_svs, allowed=("background", "tissue", "fold"))] + artifact_sources(artifact_images / "labels.csv")


@pytest.fixture(scope="module")
def qc_set(sources):
    return qc_label_set(sources, seed=0)


def exact_fraction(mask: np.ndarray, downsample: float, box) -> float:
    """Area of `box` (level-0 [x, y, w, h]) covered by the mask, from per-axis pixel overlaps (no summed-area table)."""
    def overlaps(start: float, length: float, n: int) -> np.ndarray:
        edges = np.arange(n + 1) * downsample
        return np.clip(np.minimum(edges[1:], start + length) - np.maximum(edges[:-1], start), 0, None)

    x, y, w, h = box
    return float(overlaps(y, h, mask.shape[0]) @ mask.astype(float) @ overlaps(x, w, mask.shape[1]) / (w * h))


def test_classes_balanced_and_split_60_20_20(qc_set):
    assert qc_set.classes == ("background", "tissue", "pen")  # the masks find too little fold on these images
    counts = np.bincount(qc_set.labels)
    assert len(set(counts)) == 1 and counts[0] >= 30
    for c in range(len(qc_set.classes)):
        splits = pd.Series(qc_set.splits[qc_set.labels == c]).value_counts()
        assert splits["train"] == round(0.6 * counts[c]) and splits["val"] == splits["test"] == round(0.2 * counts[c])
    assert qc_set.images.shape == (len(qc_set.labels), 112, 112, 3) and qc_set.images.dtype == np.uint8


def test_labels_agree_with_the_masks(qc_set, sources):
    by_name = {s.name: s for s in sources}
    for row in qc_set.tiles.itertuples():
        src = by_name[row.source]
        fr = {n: exact_fraction(src.qc.masks[n], src.qc.downsample, (row.x, row.y, row.w, row.h)) for n in ("tissue", "pen", "fold")}
        for n, v in fr.items():  # the stored fractions are the masks' coverage of the tile
            assert getattr(row, f"{n}_frac") == pytest.approx(v, abs=1e-6)
        label = qc_set.classes[row.label]
        assert label in src.allowed
        if label == "tissue":
            assert fr["tissue"] >= RULE.min_tissue_frac and fr["pen"] <= RULE.max_other_frac
        elif label == "background":
            assert fr["tissue"] <= RULE.max_background_tissue_frac and fr["pen"] <= RULE.max_other_frac
        else:
            assert fr["pen"] >= RULE.min_pen_frac


def test_name_labels_limit_what_a_source_gives(qc_set, artifact_images):
    """Pen only from images whose labels.csv names ink; nothing but background from the no-tissue tiles; the slide gives both."""
    names = pd.read_csv(artifact_images / "labels.csv", keep_default_na=False)
    inked = set(names.loc[~names["pen_per_name"].isin(["", "none-in-name"]), "filename"])
    tiles = qc_set.tiles.assign(name=[qc_set.classes[k] for k in qc_set.labels])
    pen_sources = set(tiles.loc[tiles["name"] == "pen", "source"])
    assert len(pen_sources) >= 4 and pen_sources <= inked
    assert set(tiles.loc[tiles["source"].isin(["histolab/tiles/no-tissue.png", "histolab/tiles/almost-white-1.png"]), "name"]) <= {"background"}
    assert set(tiles.loc[tiles["source"] == "CMU-1-Small-Region.svs", "name"]) == {"background", "tissue"}


def test_slide_tiles_are_the_slide_pixels(qc_set, cmu_svs):
    from pluto.slides import read_tile

    i = int(np.flatnonzero(qc_set.tiles["source"] == "CMU-1-Small-Region.svs")[0])
    row = qc_set.tiles.iloc[i]
    assert np.array_equal(qc_set.images[i], read_tile(cmu_svs, int(row.x), int(row.y), 0.5, 112))


def test_same_seed_same_set_other_seed_other_draw(qc_set, sources):
    again = qc_label_set(sources, seed=0)
    pd.testing.assert_frame_equal(again.tiles, qc_set.tiles)
    assert np.array_equal(again.images, qc_set.images)
    other = qc_label_set(sources, seed=1)
    assert np.array_equal(np.bincount(other.labels), np.bincount(qc_set.labels))
    assert not other.tiles[["source", "x", "y"]].equals(qc_set.tiles[["source", "x", "y"]])


def test_mean_rgb_probe_separates_background_from_tissue(qc_set):
    from pluto.eval.baselines import mean_rgb_features
    from pluto.eval.images import ArrayImages
    from pluto.eval.linear_probe import QUICK_PROBE, fit_linear_probe

    keep = np.isin(qc_set.labels, [qc_set.classes.index("background"), qc_set.classes.index("tissue")])
    x = mean_rgb_features(ArrayImages(qc_set.images[keep], 112))
    y, split = qc_set.labels[keep], qc_set.splits[keep]
    tr, va, te = (split == s for s in ("train", "val", "test"))
    fit = fit_linear_probe(x[tr], y[tr], x[va], y[va], x[te], y[te], QUICK_PROBE, 0, 2)
    assert fit.test_balanced_accuracy >= MIN_BACKGROUND_VS_TISSUE_BACC


def test_too_few_classes_is_a_clear_error(sources):
    with pytest.raises(DatasetLayoutError, match="fewer than 2 classes"):
        qc_label_set(sources[:1], min_per_class=10_000)


def test_missing_artifact_labels_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetLayoutError, match="labels file not found"):
        artifact_sources(tmp_path / "labels.csv")


def test_rule_precedence_pen_over_tissue():
    fr = pd.DataFrame({"tissue_frac": [1.0, 1.0, 0.0, 0.5], "pen_frac": [0.6, 0.0, 0.0, 0.0],
                       "fold_frac": [0.0, 0.0, 0.0, 0.0], "bubble_frac": [0.0, 0.0, 0.0, 0.0]})
    assert [QC_CLASSES[k] if k >= 0 else None for k in RULE.label(fr)] == ["pen", "tissue", "background", None]


def test_qc_labels_is_a_suite_dataset(fixed_tiny, cmu_svs, artifact_images):
    from pluto.eval.eval_config import EvalConfig
    from pluto.eval.suite import evaluate_task
    from pluto.eval.task_config import TaskConfig

    task = TaskConfig("tissue_background_pen", "qc_labels", str(cmu_svs), labels_csv=str(artifact_images / "labels.csv"),
                      classes=("background", "tissue", "pen"))
    cfg = EvalConfig(modes=("cls",), n_seeds=1, cache_dir=None, baselines=False)
    (record,), _ = evaluate_task(fixed_tiny, task, cfg)
    assert record.dataset == "qc_labels" and record.split == "test" and record.metric == "balanced_accuracy"
    assert record.values[0] > 1 / 3  # scored on the held-out test split of three balanced classes
