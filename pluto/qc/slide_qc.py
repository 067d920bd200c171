"""Per-slide QC results as stored in `work/qc/<slide_id>/`, and fast scoring of level-0 boxes.

The masks live at thumbnail resolution (`downsample` = level-0 px per mask px). A box in level-0
px maps to a fractional rectangle in mask px; its exact area-weighted coverage comes from a
summed-area table: for a piecewise-constant mask the summed-area function is bilinear inside each
pixel, so bilinear interpolation of the table at fractional corners is exact. This scores any
number of boxes with a handful of vectorised gathers (no per-box Python loop).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pluto.errors import PlutoError

MASK_NAMES = ("tissue", "pen", "fold", "bubble")
OUTSIDE = "outside"  # cell_reason of a box whose centre lies outside the slide's QC grid


def summed_area(mask: np.ndarray) -> np.ndarray:
    """(H+1, W+1) float64 table: entry [y, x] = sum of mask[:y, :x]."""
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.float64)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.float64), axis=1, out=table[1:, 1:])
    return table


def _interp(table: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear lookup of a summed-area table at fractional mask coordinates (clipped to it)."""
    h, w = table.shape[0] - 1, table.shape[1] - 1
    x = np.clip(x, 0.0, w)
    y = np.clip(y, 0.0, h)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 1) if w > 0 else np.zeros_like(x, dtype=np.int64)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 1) if h > 0 else np.zeros_like(y, dtype=np.int64)
    fx, fy = x - x0, y - y0
    x1, y1 = np.minimum(x0 + 1, w), np.minimum(y0 + 1, h)
    top = table[y0, x0] * (1 - fx) + table[y0, x1] * fx
    bottom = table[y1, x0] * (1 - fx) + table[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def box_fractions(table: np.ndarray, boxes_l0: np.ndarray, downsample: float) -> np.ndarray:
    """Fraction of each level-0 box [x, y, w, h] covered by the mask behind `table`.

    Area outside the mask counts as uncovered; boxes with zero area give 0.
    """
    boxes = np.asarray(boxes_l0, dtype=np.float64).reshape(-1, 4)
    x0, y0 = boxes[:, 0] / downsample, boxes[:, 1] / downsample
    x1, y1 = x0 + boxes[:, 2] / downsample, y0 + boxes[:, 3] / downsample
    total = _interp(table, x1, y1) - _interp(table, x0, y1) - _interp(table, x1, y0) + _interp(table, x0, y0)
    area = (x1 - x0) * (y1 - y0)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(area > 0, total / np.where(area > 0, area, 1.0), 0.0)
    return np.clip(frac, 0.0, 1.0)


@dataclass
class SlideQC:
    """QC of one slide: masks at thumbnail resolution plus the per-cell table (`qc.parquet`)."""

    slide_id: str
    masks: dict[str, np.ndarray]
    downsample: float  # level-0 px per mask px
    cells: pd.DataFrame
    _tables: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name in MASK_NAMES:
            self._tables[name] = summed_area(self.masks[name])

    def score_boxes(self, boxes_l0: np.ndarray) -> pd.DataFrame:
        """Score level-0 boxes (N, 4) [x, y, w, h].

        Returns tissue_frac, pen_frac, fold_frac, bubble_frac (exact area fractions of each mask
        inside the box), cell_keep (the QC cell containing the box centre passed the pixel
        filters) and cell_reason (that cell's reason, or "outside" when no cell contains it).
        """
        boxes = np.asarray(boxes_l0, dtype=np.float64).reshape(-1, 4)
        out = {f"{n}_frac": box_fractions(self._tables[n], boxes, self.downsample) for n in MASK_NAMES}
        keep, reason = self._cell_lookup(boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2)
        out["cell_keep"] = keep
        out["cell_reason"] = reason
        return pd.DataFrame(out)

    def _cell_lookup(self, cx: np.ndarray, cy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cells = self.cells
        n = len(cx)
        if cells.empty:
            return np.zeros(n, dtype=bool), np.full(n, OUTSIDE, dtype=object)
        step_x = int(cells["w_l0"].max())
        step_y = int(cells["h_l0"].max())
        col_of = (cells["x_l0"].to_numpy() // step_x).astype(np.int64)
        row_of = (cells["y_l0"].to_numpy() // step_y).astype(np.int64)
        grid = np.full((row_of.max() + 1, col_of.max() + 1), -1, dtype=np.int64)
        grid[row_of, col_of] = np.arange(len(cells))
        col = np.floor(cx / step_x).astype(np.int64)
        row = np.floor(cy / step_y).astype(np.int64)
        inside = (col >= 0) & (row >= 0) & (col < grid.shape[1]) & (row < grid.shape[0])
        idx = np.full(n, -1, dtype=np.int64)
        idx[inside] = grid[row[inside], col[inside]]
        found = idx >= 0
        keep = np.zeros(n, dtype=bool)
        keep[found] = cells["keep"].to_numpy(dtype=bool)[idx[found]]
        reason = np.full(n, OUTSIDE, dtype=object)
        reason[found] = cells["reason"].to_numpy(dtype=object)[idx[found]]
        return keep, reason


def slide_dir(qc_dir: Path, slide_id: str) -> Path:
    """`qc_dir/<slide_id>`; refuses ids that are not plain names (no path traversal)."""
    if not slide_id or Path(slide_id).name != slide_id or slide_id in {".", ".."}:
        raise PlutoError(f"{slide_id!r}: not a valid slide_id (must be a plain name)")
    return Path(qc_dir) / slide_id


def load_qc(qc_dir: Path, slide_id: str) -> SlideQC:
    """Load masks.npz and qc.parquet written by `run_qc` for one slide."""
    d = slide_dir(qc_dir, slide_id)
    masks_path, cells_path = d / "masks.npz", d / "qc.parquet"
    for p in (masks_path, cells_path):
        if not p.is_file():
            raise PlutoError(f"{p}: QC output missing; run `pluto qc` first")
    with np.load(masks_path) as npz:
        missing = [n for n in (*MASK_NAMES, "downsample") if n not in npz.files]
        if missing:
            raise PlutoError(f"{masks_path}: missing arrays {missing}")
        masks = {n: npz[n].astype(bool) for n in MASK_NAMES}
        downsample = float(npz["downsample"])
    return SlideQC(slide_id=slide_id, masks=masks, downsample=downsample, cells=pd.read_parquet(cells_path))
