"""Pixel filters on each tile's own pixels, at its um/px, decided at tiling time.

The Midnight paper (Karasikov et al., 2025, "Extraction of training tiles") accepts a tile when
>= 60% of its pixels pass the HSV filter and >= 40% are foreground. QC scores 128 um cells at
0.5 um/px; a 550 px tile at 2 um/px covers ~70 of them, and a cell under 40% tissue never got the
HSV check, so the cell under a tile's centre cannot stand in for the tile. Here every candidate
tile is read exactly as the loader will read it (`pluto.slides.read_tile`) and scored.

The verdict is taken while tiling, and the scores stay in the manifest: dropping tiles in the
loader instead would change which row the global sample order (`pluto.tiling.order`) points at,
and a resumed run would no longer continue the same stream.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pluto.qc.filters import MIDNIGHT_FOREGROUND_MIN_FRAC, MIDNIGHT_HSV_MIN_FRAC, HSVRange, tile_scores
from pluto.tiling.manifest import SCORE_COLUMNS


@dataclass(frozen=True)
class PixelFilter:
    """Thresholds on a tile's own pixels. `min_blur_var` is QC's (calibrated at 0.5 um/px: a blurred
    scan stays blurred at 0.25-0.5 um/px, while downsampling to 1-2 um/px sharpens it, so at coarse
    mpps the check is lenient); `min_saturation` is the tissue mask's floor. The HSV verdict applies
    to H&E slides only, as in QC; its score is recorded for every slide."""

    min_hsv: float = MIDNIGHT_HSV_MIN_FRAC
    min_foreground: float = MIDNIGHT_FOREGROUND_MIN_FRAC
    min_blur_var: float = 100.0
    min_saturation: int = 20
    hsv: HSVRange = field(default_factory=HSVRange)
    batch: int = 64  # tiles read and scored at a time: bounds memory to one batch of pixels

    def passes(self, scores: pd.DataFrame, hsv_on: bool) -> np.ndarray:
        ok = (scores["fg_frac"].to_numpy() >= self.min_foreground) & (scores["blur_var"].to_numpy() >= self.min_blur_var)
        return ok & (scores["hsv_frac"].to_numpy() >= self.min_hsv) if hsv_on else ok

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_tiles(handle: Any, origins: np.ndarray, mpp: float, tile_px: int, pixel_filter: PixelFilter,
                rel_tol: float) -> pd.DataFrame:
    """`SCORE_COLUMNS` of each tile whose level-0 top-left is a row of `origins` (N, 2), read from `handle`."""
    from pluto.slides import read_tile

    parts = []
    for start in range(0, len(origins), pixel_filter.batch):
        tiles = np.stack([read_tile(handle, int(x), int(y), mpp, tile_px, rel_tol)
                          for x, y in origins[start:start + pixel_filter.batch]])
        parts.append(pd.DataFrame(tile_scores(tiles, pixel_filter.hsv, pixel_filter.min_saturation)))
    if not parts:
        return pd.DataFrame({c: np.zeros(0) for c in SCORE_COLUMNS})
    return pd.concat(parts, ignore_index=True)
