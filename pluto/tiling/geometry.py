"""Tile placement in level-0 px for one slide and one TileSpec.

The read level and read size come from `pluto.slides.plan_read` (the one level-choice function),
so the manifest says exactly what the loader will read. Tiles are placed on the read level's
pixel grid (`x_l0 = round(x_lv * downsample)`), which keeps every read aligned with the stored
pyramid pixels: no fractional offsets, no resampling twice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pluto.errors import PlutoError
from pluto.slides import SlideInfo, TileSpec, check_resolution, plan_read
from pluto.slides.geometry import MPP_REL_TOL

SKIP_UPSAMPLE = "upsample"  # target finer than the slide's native mpp beyond tolerance
SKIP_TOO_LARGE = "larger_than_slide"  # one tile's footprint does not fit on the slide


@dataclass(frozen=True)
class SpecPlan:
    """How one TileSpec is read on one slide: `read_w` x `read_h` level px at `level`, downsample from dims.

    The tile is square in um, so on a slide whose pixels are not (mpp_x != mpp_y) it covers
    different numbers of level-0 px across (`footprint_w`) and down (`footprint_h`).
    """

    mpp: float
    tile_px: int
    level: int
    read_w: int
    read_h: int
    downsample: float  # level-0 px per level px of `level`
    nominal_w: float  # tile_px * mpp / mpp_x: the physical footprint across in level-0 px
    nominal_h: float  # tile_px * mpp / mpp_y: down

    @property
    def read_px(self) -> int:
        """Level px read across (equal to `read_h` on square-pixel slides)."""
        return self.read_w

    @property
    def footprint_w(self) -> int:
        """Level-0 width of the region actually read (read_w level px), at least the nominal one."""
        return int(np.ceil(max(self.read_w * self.downsample, self.nominal_w) - 1e-6))

    @property
    def footprint_h(self) -> int:
        """Level-0 height of the region actually read, at least the nominal one."""
        return int(np.ceil(max(self.read_h * self.downsample, self.nominal_h) - 1e-6))

    @property
    def footprint_l0(self) -> int:
        """Edge of the level-0 square holding the read: both footprints on square-pixel slides."""
        return max(self.footprint_w, self.footprint_h)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_spec(info: SlideInfo, spec: TileSpec, rel_tol: float = MPP_REL_TOL) -> SpecPlan | tuple[str, str]:
    """The SpecPlan, or (skip reason, detail) when the spec cannot be tiled on this slide."""
    try:
        check_resolution(info, spec.mpp, rel_tol)
    except PlutoError as exc:
        return SKIP_UPSAMPLE, str(exc)
    req = plan_read(info, 0, 0, spec.mpp, spec.tile_px, rel_tol)
    mpp_x, mpp_y = info.mpp_xy
    plan = SpecPlan(
        mpp=spec.mpp,
        tile_px=spec.tile_px,
        level=req.level,
        read_w=req.read_w,
        read_h=req.read_h,
        downsample=info.level_downsamples[req.level],
        nominal_w=spec.tile_px * spec.mpp / mpp_x,
        nominal_h=spec.tile_px * spec.mpp / mpp_y,
    )
    if plan.footprint_w > info.width or plan.footprint_h > info.height:
        return SKIP_TOO_LARGE, (f"{info.path}: tile of {plan.footprint_w}x{plan.footprint_h} level-0 px "
                                f"exceeds {info.width}x{info.height}")
    return plan


def fits_on_slide(info: SlideInfo, plan: SpecPlan, x_l0: np.ndarray, y_l0: np.ndarray) -> np.ndarray:
    """Bool per tile: its read footprint (level-0 px) lies wholly on the slide."""
    return (x_l0 >= 0) & (y_l0 >= 0) & (x_l0 + plan.footprint_w <= info.width) & (y_l0 + plan.footprint_h <= info.height)


def grid_origins(info: SlideInfo, plan: SpecPlan) -> np.ndarray:
    """(N, 2) int64 level-0 top-left (x, y) of the non-overlapping grid, row-major, all inside."""
    lw, lh = info.level_dims[plan.level]
    xs = np.rint(np.arange(lw // plan.read_w, dtype=np.float64) * plan.read_w * plan.downsample).astype(np.int64)
    ys = np.rint(np.arange(lh // plan.read_h, dtype=np.float64) * plan.read_h * plan.downsample).astype(np.int64)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    xy = np.stack([gx.ravel(), gy.ravel()], axis=1)
    return xy[fits_on_slide(info, plan, xy[:, 0], xy[:, 1])]


def centred_origins(info: SlideInfo, plan: SpecPlan, centres_l0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-lefts (N, 2) int64 of tiles centred on `centres_l0` (N, 2 float), snapped to the read
    level's pixel grid (centre error <= half a level pixel), and a bool mask of those inside."""
    c = np.asarray(centres_l0, dtype=np.float64).reshape(-1, 2)
    half = np.array([plan.read_w, plan.read_h]) * plan.downsample / 2.0
    lv = np.rint((c - half) / plan.downsample)
    xy = np.rint(lv * plan.downsample).astype(np.int64)
    return xy, fits_on_slide(info, plan, xy[:, 0], xy[:, 1])


def boxes(origins: np.ndarray, plan: SpecPlan) -> np.ndarray:
    """(N, 4) level-0 [x, y, w, h] boxes of the tiles, for QC scoring."""
    wh = np.tile(np.array([[plan.footprint_w, plan.footprint_h]], dtype=np.int64), (len(origins), 1))
    return np.hstack([origins.astype(np.int64), wh])
