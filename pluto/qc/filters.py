"""Per-tile pixel filters, vectorised over a batch of tiles (N x H x W x 3 uint8 RGB, or one tile).

- `hsv_fraction`: the Midnight paper's filter (Karasikov et al., 2025, "Training state-of-the-art
  pathology foundation models with orders of magnitude less data", section "Extraction of
  training tiles"): "a tile is only accepted if >= 60% of its pixels have their hue, saturation,
  and value in ranges [90, 180], [8, 255], and [103, 255]". The ranges are OpenCV HSV units
  (H 0-179, so H <= 180 is no bound), inclusive. It is tuned for H&E: it keeps pink/purple
  stained tissue and rejects white background, adipose tissue and dark debris. The same section
  sets the foreground threshold to 40% (applied to the tissue-mask fraction by `run_qc`).
- `blur_variance`: variance of the Laplacian of the grey tile (Pech-Pacheco et al., 2000): a sharp
  tile has strong second derivatives at nuclear edges, a blurred one has none. Its value depends
  on the resolution, so it is always computed at the QC working mpp.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

MIDNIGHT_HSV_MIN_FRAC = 0.60  # Midnight paper: ">= 60% of its pixels"
MIDNIGHT_FOREGROUND_MIN_FRAC = 0.40  # Midnight paper: "foreground area threshold set to 40%"


@dataclass(frozen=True)
class HSVRange:
    """Inclusive OpenCV-unit bounds (H 0-180, S and V 0-255); defaults from the Midnight paper."""

    h_min: int = 90
    h_max: int = 180
    s_min: int = 8
    s_max: int = 255
    v_min: int = 103
    v_max: int = 255

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> HSVRange:
        return cls(**d)


def _batch(tiles: np.ndarray) -> np.ndarray:
    arr = np.asarray(tiles)
    if arr.dtype != np.uint8 or arr.shape[-1] != 3 or arr.ndim not in (3, 4):
        raise ValueError(f"tiles must be (N,) H x W x 3 uint8, got {arr.shape} {arr.dtype}")
    return arr[None] if arr.ndim == 3 else arr


def _as_image(batch: np.ndarray) -> np.ndarray:
    """View N x H x W x 3 as one (N*H) x W x 3 image so one cv2 call converts the whole batch."""
    n, h, w, _ = batch.shape
    return np.ascontiguousarray(batch).reshape(n * h, w, 3)


def _fractions(masks: np.ndarray, n: int, h: int, w: int) -> np.ndarray:
    """Per-tile fraction of non-zero pixels of a stacked (N*H) x W mask."""
    return np.array([cv2.countNonZero(m) for m in masks.reshape(n, h, w)], dtype=np.float64) / (h * w)


def _in_range(hsv: np.ndarray, hsv_range: HSVRange) -> np.ndarray:
    lo = (hsv_range.h_min, hsv_range.s_min, hsv_range.v_min)
    hi = (min(hsv_range.h_max, 255), hsv_range.s_max, hsv_range.v_max)
    return cv2.inRange(hsv, lo, hi)


def _interior_variance(lap: np.ndarray) -> float:
    """Variance of a tile's Laplacian over its interior, from cv2's sum and squared L2 norm (exact in
    float64, and about half the time of `cv2.meanStdDev` on the non-contiguous interior view)."""
    inner = lap[1:-1, 1:-1]
    n = inner.shape[0] * inner.shape[1]
    mean = cv2.sumElems(inner)[0] / n
    return cv2.norm(inner, cv2.NORM_L2SQR) / n - mean * mean


def _laplacian_variance(image: np.ndarray, n: int, h: int, w: int) -> np.ndarray:
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    lap = cv2.Laplacian(grey, cv2.CV_16S).reshape(n, h, w)
    return np.array([_interior_variance(t) for t in lap], dtype=np.float64)


def hsv_fraction(tiles: np.ndarray, hsv_range: HSVRange = HSVRange()) -> np.ndarray:
    """Fraction of pixels of each tile inside `hsv_range` (float64 array of length N)."""
    batch = _batch(tiles)
    n, h, w, _ = batch.shape
    return _fractions(_in_range(cv2.cvtColor(_as_image(batch), cv2.COLOR_RGB2HSV), hsv_range), n, h, w)


def blur_variance(tiles: np.ndarray) -> np.ndarray:
    """Variance of the 3x3 Laplacian of each grey tile over its interior (float64, length N); low = blurred.

    The Laplacian runs once over the stacked batch; only pixels whose 3x3 neighbourhood lies
    inside their own tile (rows and columns 1..-2) are counted, so no value crosses the seam
    between stacked tiles and none depends on border extrapolation.
    """
    batch = _batch(tiles)
    n, h, w, _ = batch.shape
    if h < 3 or w < 3:
        raise ValueError(f"tiles must be at least 3 x 3 px for a Laplacian, got {h} x {w}")
    return _laplacian_variance(_as_image(batch), n, h, w)


def tile_scores(tiles: np.ndarray, hsv_range: HSVRange = HSVRange(), min_saturation: int = 20) -> dict[str, np.ndarray]:
    """The three per-tile pixel scores in one pass (one HSV and one grey conversion per tile).

    `hsv_frac`: as `hsv_fraction`; `fg_frac`: fraction of pixels more saturated than
    `min_saturation` (the tissue mask's floor, `QCParams.tissue_min_saturation`: glass is grey or
    white, stained tissue is not), Midnight's foreground on the tile's own pixels; `blur_var`: as
    `blur_variance`. Tiling scores every candidate tile with it, so it must keep up with the reads:
    one tile at a time keeps every intermediate in the CPU cache (faster per core in bench_qc than
    passes over stacked batches), and the foreground is a threshold of the S channel alone.
    """
    batch = _batch(tiles)
    n, h, w, _ = batch.shape
    if h < 3 or w < 3:
        raise ValueError(f"tiles must be at least 3 x 3 px for a Laplacian, got {h} x {w}")
    out = np.empty((3, n))
    for i, tile in enumerate(batch):
        tile = np.ascontiguousarray(tile)
        hsv = cv2.cvtColor(tile, cv2.COLOR_RGB2HSV)
        saturated = cv2.threshold(cv2.extractChannel(hsv, 1), min_saturation, 255, cv2.THRESH_BINARY)[1]
        out[0, i] = cv2.countNonZero(_in_range(hsv, hsv_range))
        out[1, i] = cv2.countNonZero(saturated)
        out[2, i] = _interior_variance(cv2.Laplacian(cv2.cvtColor(tile, cv2.COLOR_RGB2GRAY), cv2.CV_16S))
    return {"hsv_frac": out[0] / (h * w), "fg_frac": out[1] / (h * w), "blur_var": out[2]}
