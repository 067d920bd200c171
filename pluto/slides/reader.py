"""Tiles and thumbnails at a physical resolution (um/px), read from the best pyramid level.

A tile is read once at the coarsest level that is not coarser than the target beyond tolerance,
snapped to that level's pixel grid (see `geometry.plan_read`), then resized with area
interpolation (`cv2.INTER_AREA`, an antialiasing box filter) to the output size.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pluto.slides.geometry import MPP_REL_TOL, TileRequest, best_level, plan_read
from pluto.slides.handles import SlideHandle, get_handle


def _handle(path_or_handle: str | Path | SlideHandle) -> SlideHandle:
    return path_or_handle if isinstance(path_or_handle, SlideHandle) else get_handle(path_or_handle)


def resize_area(rgb: np.ndarray, w: int, h: int) -> np.ndarray:
    """Antialiased resize to (h, w); a no-op when the size already matches."""
    if rgb.shape[1] == w and rgb.shape[0] == h:
        return rgb
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)


def read_request(handle: SlideHandle, req: TileRequest) -> np.ndarray:
    """Execute a planned read: (tile_px, tile_px, 3) uint8 RGB."""
    region = handle.read_level(req.level, req.x_lv, req.y_lv, req.read_px, req.read_px)
    return resize_area(region, req.tile_px, req.tile_px)


def read_tile(
    path_or_handle: str | Path | SlideHandle,
    x_l0: int,
    y_l0: int,
    mpp: float,
    tile_px: int,
    rel_tol: float = MPP_REL_TOL,
) -> np.ndarray:
    """(tile_px, tile_px, 3) uint8 RGB of the square whose top-left is level-0 (x_l0, y_l0) at `mpp` um/px.

    The square covers `tile_px * mpp / info.mpp` level-0 px. Raises PlutoError when `mpp` is finer
    than native by more than `rel_tol`, SlideError(unreadable) when the pixels cannot be decoded.
    """
    handle = _handle(path_or_handle)
    return read_request(handle, plan_read(handle.info, x_l0, y_l0, mpp, tile_px, rel_tol))


def read_thumbnail(
    path_or_handle: str | Path | SlideHandle, mpp: float, rel_tol: float = MPP_REL_TOL
) -> tuple[np.ndarray, float]:
    """Whole slide at `mpp` um/px: (RGB H x W x 3 uint8, downsample = level-0 px per thumbnail px).

    Built from the pyramid (never from the slide's associated thumbnail/label/macro images).
    """
    handle = _handle(path_or_handle)
    info = handle.info
    level = best_level(info, mpp, rel_tol)
    lw, lh = info.level_dims[level]
    scale = info.mpp / mpp  # thumbnail px per level-0 px
    tw, th = max(1, int(round(info.width * scale))), max(1, int(round(info.height * scale)))
    thumb = resize_area(handle.read_level(level, 0, 0, lw, lh), tw, th)
    return thumb, info.width / tw
