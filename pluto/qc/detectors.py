"""Artifact detectors on a slide thumbnail: the plug-in point for a learned segmenter.

A detector is any callable `(thumb_rgb uint8 H x W x 3, tissue bool H x W) -> dict[str, bool H x W]`
with keys among `pen`, `fold`, `bubble` (a missing key means "this detector does not look for
it"). PLUTO-4 uses a learned artifact segmenter (Le et al., 2025, cited in the PLUTO-4 paper,
"Artifact Detect"); settings name a replacement as a dotted path "package.module:callable".

The default `heuristic_detector` works on colour alone, in OpenCV HSV units (H 0-179, S and V
0-255), on the thumbnail:

- pen / marker ink (tuned on the histolab and HistoPrep pen fixtures in shared/data/artifacts):
  blue  H in [95, 128], S >= 60, V >= 40  (blue/violet ink; hematoxylin is H >= ~125 and less
        saturated at thumbnail scale, hence the upper bound),
  green H in [35, 95),  S >= 40, V >= 40  (green/teal ink; no H&E or DAB pixel has these hues),
  red   H <= 8 or H >= 170, S >= 140, V >= 60  (red ink is far more saturated than eosin,
        whose S stays below ~140 at thumbnail scale),
  black V < 60 (any hue: black ink and other opaque debris; thumbnail-averaged nuclei stay
        brighter).
- folds: a fold is two tissue layers, so it is darker and more saturated than the tissue around
  it (Bautista & Yagi 2009 used this saturation-minus-luminance cue). A tissue pixel, after a
  median filter, is a fold when S - V > 60, V >= 60 and it is neither ink nor within 2 px of ink
  (blurred ink edges are dark and saturated too). The margin 60 keeps dense nuclei out (CRC
  tumour/lymphocyte patches at 0.5 um/px: < 1% of pixels) and flags tissue stacked three layers
  deep (optical density x3); a double layer of pale tissue is missed: folds are caught only when dark.
- bubbles (weak heuristic; expect misses and false hits): an air bubble under the coverslip that
  clears the tissue leaves a large, round, tissue-free hole inside the tissue. Enclosed holes of
  at least 0.2% of the tissue area with circularity 4*pi*A/P^2 >= 0.7 are marked (their rim
  included). Round lumens and vessels of that size are marked too; bubbles lying over tissue are
  missed. Replace it with a learned segmenter when bubbles matter.
"""

from __future__ import annotations

import importlib
from typing import Callable, Protocol

import cv2
import numpy as np

from pluto.errors import ConfigError, PlutoError

ARTIFACTS = ("pen", "fold", "bubble")
DEFAULT_DETECTOR = "pluto.qc.detectors:heuristic_detector"

_SQUARE3 = np.ones((3, 3), np.uint8)


class Detector(Protocol):
    def __call__(self, thumb_rgb: np.ndarray, tissue: np.ndarray) -> dict[str, np.ndarray]: ...


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)
    return hsv[..., 0], hsv[..., 1], hsv[..., 2]


def _clean(mask: np.ndarray) -> np.ndarray:
    """Drop isolated pixels, then close one-pixel gaps."""
    m = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, _SQUARE3)
    return cv2.morphologyEx(m, cv2.MORPH_CLOSE, _SQUARE3).astype(bool)


def pen_mask(thumb_rgb: np.ndarray) -> np.ndarray:
    """Ink pixels (blue, green, red, black) by hue/saturation/value; thresholds in the module doc."""
    h, s, v = _hsv(thumb_rgb)
    blue = (h >= 95) & (h <= 128) & (s >= 60) & (v >= 40)
    green = (h >= 35) & (h < 95) & (s >= 40) & (v >= 40)
    red = ((h <= 8) | (h >= 170)) & (s >= 140) & (v >= 60)
    black = v < 60
    return _clean(blue | green | red | black)


def fold_mask(thumb_rgb: np.ndarray, tissue: np.ndarray, pen: np.ndarray) -> np.ndarray:
    """Dark, saturated tissue (stacked layers): median-filtered S - V > 60, ink excluded."""
    smooth = cv2.medianBlur(np.ascontiguousarray(thumb_rgb), 5)
    _, s, v = _hsv(smooth)
    near_pen = cv2.dilate(pen.astype(np.uint8), _SQUARE3, iterations=2).astype(bool)
    fold = (s.astype(np.int16) - v.astype(np.int16) > 60) & tissue & ~near_pen & (v >= 60)
    return _clean(fold)


def bubble_mask(tissue: np.ndarray) -> np.ndarray:
    """Large round holes enclosed by tissue (weak heuristic, see module doc)."""
    out = np.zeros(tissue.shape, dtype=bool)
    tissue_px = int(tissue.sum())
    if tissue_px == 0:
        return out
    background = np.pad(~tissue, 1, constant_values=True).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(background, connectivity=4)
    labels = labels[1:-1, 1:-1]
    outer = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    min_px = max(16, int(0.002 * tissue_px))
    for label in range(1, n):
        if label in outer or stats[label, cv2.CC_STAT_AREA] < min_px:
            continue
        hole = (labels == label).astype(np.uint8)
        contours, _ = cv2.findContours(hole, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        perimeter = sum(cv2.arcLength(c, True) for c in contours)
        if perimeter > 0 and 4 * np.pi * hole.sum() / perimeter**2 >= 0.7:
            out |= cv2.dilate(hole, _SQUARE3, iterations=2).astype(bool)
    return out


def heuristic_detector(thumb_rgb: np.ndarray, tissue: np.ndarray) -> dict[str, np.ndarray]:
    """Default detector: colour heuristics for pen, folds and bubbles (see module doc)."""
    pen = pen_mask(thumb_rgb)
    return {"pen": pen, "fold": fold_mask(thumb_rgb, tissue, pen), "bubble": bubble_mask(tissue)}


def load_detector(dotted: str) -> Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]:
    """Resolve "package.module:callable"; raises ConfigError naming what is wrong."""
    module_name, sep, attr = dotted.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"qc.detector {dotted!r}: expected 'package.module:callable'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"qc.detector {dotted!r}: cannot import {module_name}: {exc}") from exc
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise ConfigError(f"qc.detector {dotted!r}: {module_name} has no callable {attr!r}")
    return fn


def apply_detector(detector: Callable, thumb_rgb: np.ndarray, tissue: np.ndarray) -> dict[str, np.ndarray]:
    """Run a detector and check its output: bool H x W per artifact, absent keys all False."""
    raw = detector(thumb_rgb, tissue)
    name = getattr(detector, "__qualname__", repr(detector))
    if not isinstance(raw, dict):
        raise PlutoError(f"detector {name}: returned {type(raw).__name__}, expected dict of masks")
    unknown = set(raw) - set(ARTIFACTS)
    if unknown:
        raise PlutoError(f"detector {name}: unknown artifact keys {sorted(unknown)}; allowed {ARTIFACTS}")
    out = {}
    for key in ARTIFACTS:
        mask = np.asarray(raw.get(key, np.zeros(tissue.shape, dtype=bool)))
        if mask.shape != tissue.shape:
            raise PlutoError(f"detector {name}: {key} mask shape {mask.shape} != thumbnail {tissue.shape}")
        out[key] = mask.astype(bool)
    return out
