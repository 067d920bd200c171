"""Tissue mask and artifact detectors on real pen-marked images, clean CRC patches and background tiles."""

from __future__ import annotations

import numpy as np
import pytest

from pluto.errors import ConfigError, PlutoError
from pluto.qc.detectors import DEFAULT_DETECTOR, apply_detector, heuristic_detector, load_detector, pen_mask
from pluto.qc.tissue import tissue_mask

# Pen fixtures whose ink covers a large part of the image (fractions measured: 0.16 to 0.20).
BIG_INK = ["histolab/thumbnails/tcga-green-pen.png", "histolab/thumbnails/tcga-red-pen.png",
           "histolab/thumbnails/diagnostic-slide-thumb-rgb.png"]
CLEAN_MAX_PEN = 0.01  # clean CRC patches measure <= 0.005


@pytest.mark.parametrize("name", BIG_INK)
def test_pen_fraction_high_on_pen_images(rgb, artifact_images, name):
    assert pen_mask(rgb(artifact_images / name)).mean() > 0.10


def test_blue_pen_found_where_the_ticks_are(rgb, artifact_images):
    """wsi-blue-pen: the blue ticks are in the right quarter (visible in the image)."""
    img = rgb(artifact_images / "histolab/thumbnails/wsi-blue-pen.png")
    ys, xs = np.nonzero(pen_mask(img))
    assert xs.size > 0.01 * img.shape[0] * img.shape[1]
    assert (xs > 0.75 * img.shape[1]).mean() > 0.95


def test_histoprep_blue_ink_localised(rgb, artifact_images):
    """slide_with_ink.jpeg: the blue ink blot lies at x 3500-4100, y >= 750 (visible in the image)."""
    img = rgb(artifact_images / "histoprep/slide_with_ink.jpeg")
    pen = pen_mask(img)
    assert pen[750:, 3500:4100].mean() > 0.15
    ys, xs = np.nonzero(pen)
    assert ((xs >= 3500) & (xs < 4100) & (ys >= 750)).mean() > 0.85


def test_pen_near_zero_on_clean_crc_patches(crc_images):
    fracs = {k: pen_mask(v).mean() for k, v in crc_images.items()}
    assert max(fracs.values()) < CLEAN_MAX_PEN, fracs


@pytest.mark.parametrize("label", ["TUM", "LYM"])
def test_fold_detector_spares_tumour_and_lymphocyte_patches(crc_images, label):
    patches = [v for k, v in crc_images.items() if k.startswith(label + "/")]
    assert len(patches) == 4
    for img in patches:
        masks = heuristic_detector(img, np.ones(img.shape[:2], bool))
        assert masks["fold"].mean() < 0.01


def test_fold_detector_finds_stacked_tissue(rgb, artifact_images):
    """Three stacked layers triple the optical density (Beer-Lambert: I -> 255 (I/255)^3)."""
    img = rgb(artifact_images / "histolab/tiles/tissue-level2-3000-7666-7096-11763.png")
    square = (slice(128, 208), slice(256, 336))
    folded = img.copy()
    folded[square] = (255 * (img[square] / 255.0) ** 3).astype(np.uint8)
    tissue = np.ones(img.shape[:2], bool)
    fold = heuristic_detector(folded, tissue)["fold"]
    inside = fold[square].mean()
    outside = (fold.sum() - fold[square].sum()) / (fold.size - fold[square].size)
    assert inside > 0.1 and inside > 10 * outside


def test_tissue_mask_agrees_with_histolab(rgb, artifact_images):
    """histolab's expected TissueMask of its diagnostic thumbnail (pen counted as tissue, as ours).

    The thumbnail has no mpp; ~32 um/px is estimated from its ~18 mm tissue over 468 px. We
    measure IoU 0.94; a plain Otsu on saturation (ink not excluded) gives 0.39.
    """
    img = rgb(artifact_images / "histolab/thumbnails/diagnostic-slide-thumb-rgb.png")
    expected = np.load(artifact_images / "histolab/expected_masks/tissue-mask-diagnostic-slide-thumb-rgb.npy")
    mask = tissue_mask(img, mpp=32.0)
    iou = (mask & expected).sum() / (mask | expected).sum()
    assert iou > 0.9


@pytest.mark.parametrize("name", ["almost-white-1.png", "no-tissue.png", "no-tissue-line.png"])
def test_background_tiles_have_no_tissue(rgb, artifact_images, name):
    img = rgb(artifact_images / "histolab/tiles" / name)
    assert tissue_mask(img, mpp=1.0).mean() < 0.01


def test_blank_slide_gives_empty_mask_not_noise():
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(235, 6, (400, 500, 3)), 0, 255).astype(np.uint8)
    mask = tissue_mask(glass, mpp=8.0)
    assert not mask.any()
    assert not any(m.any() for m in heuristic_detector(glass, mask).values())


def test_load_detector_validates_dotted_path():
    assert load_detector(DEFAULT_DETECTOR) is heuristic_detector
    for bad in ["pluto.qc.detectors", "no_such_module_xyz:fn", "pluto.qc.detectors:nope", "pluto.qc.detectors:ARTIFACTS"]:
        with pytest.raises(ConfigError, match="qc.detector"):
            load_detector(bad)


def test_apply_detector_checks_output():
    thumb = np.full((10, 12, 3), 240, np.uint8)
    tissue = np.zeros((10, 12), bool)
    out = apply_detector(lambda t, m: {"pen": np.ones_like(m)}, thumb, tissue)
    assert out["pen"].all() and not out["fold"].any() and not out["bubble"].any()
    with pytest.raises(PlutoError, match="shape"):
        apply_detector(lambda t, m: {"pen": np.ones((3, 3), bool)}, thumb, tissue)
    with pytest.raises(PlutoError, match="unknown artifact"):
        apply_detector(lambda t, m: {"smudge": m}, thumb, tissue)
