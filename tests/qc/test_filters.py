"""Pixel filters: the Midnight HSV filter and variance-of-Laplacian blur, on real patches."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pluto.qc.filters import HSVRange, blur_variance, hsv_fraction
from pluto.qc.params import QCParams


def test_hsv_filter_keeps_he_tissue_patches(crc_images):
    """Every non-adipose CRC patch passes (>= 60%); adipose may fail, which is the filter's purpose."""
    params = QCParams()
    for key, img in crc_images.items():
        frac = hsv_fraction(img)[0]
        if not key.startswith("ADI/"):
            assert frac >= params.hsv_min_frac, key


@pytest.mark.parametrize("name", ["almost-white-1.png", "no-tissue.png"])
def test_hsv_filter_drops_background(rgb, artifact_images, name):
    assert hsv_fraction(rgb(artifact_images / "histolab/tiles" / name))[0] < 0.05


def test_hsv_fraction_counts_the_paper_ranges():
    """Inclusive OpenCV bounds: H 90-180, S 8-255, V 103-255 (Midnight paper)."""
    hsv = np.array([[[90, 8, 103], [89, 200, 200], [120, 7, 200], [150, 100, 102]]], np.uint8)
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    back = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    expected = np.mean([(90 <= h <= 180) and s >= 8 and v >= 103 for h, s, v in back[0]])
    assert hsv_fraction(rgb)[0] == pytest.approx(expected)
    assert hsv_fraction(rgb, HSVRange(h_min=0))[0] >= expected


def test_batch_equals_one_by_one(crc_images):
    tiles = np.stack(list(crc_images.values())[:8])
    one = np.array([hsv_fraction(t)[0] for t in tiles])
    np.testing.assert_allclose(hsv_fraction(tiles), one)
    np.testing.assert_allclose(blur_variance(tiles), [blur_variance(t)[0] for t in tiles])


def test_blur_found_on_blurred_tiles_not_on_originals(crc_images):
    threshold = QCParams().min_blur_var
    tiles = np.stack(list(crc_images.values()))
    blurred = np.stack([cv2.GaussianBlur(t, (0, 0), 2.0) for t in tiles])
    sharp_var, blurred_var = blur_variance(tiles), blur_variance(blurred)
    assert (sharp_var >= threshold).all()
    assert (blurred_var < threshold).all()
    assert (blurred_var < 0.2 * sharp_var).all()


def test_filters_reject_bad_input():
    with pytest.raises(ValueError):
        hsv_fraction(np.zeros((4, 4, 3), np.float32))
