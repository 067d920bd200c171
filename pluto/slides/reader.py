"""Tiles and thumbnails at a physical resolution (um/px), read from the best pyramid level.

A tile is read once at the coarsest level that is not coarser than the target beyond tolerance,
snapped to that level's pixel grid (see `geometry.plan_read`), then resized with area
interpolation (`cv2.INTER_AREA`, an antialiasing box filter) to the output size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pluto.slides.geometry import MPP_REL_TOL, TileRequest, best_level, plan_read
from pluto.slides.handles import SlideHandle, get_handle

THUMB_BLOCK_PX = 2048  # level px per block edge of a thumbnail read: 12 MiB of RGB at a time


def _handle(path_or_handle: str | Path | SlideHandle) -> SlideHandle:
    return path_or_handle if isinstance(path_or_handle, SlideHandle) else get_handle(path_or_handle)


def resize_area(rgb: np.ndarray, w: int, h: int) -> np.ndarray:
    """Antialiased resize to (h, w); a no-op when the size already matches."""
    if rgb.shape[1] == w and rgb.shape[0] == h:
        return rgb
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)


def read_request(handle: SlideHandle, req: TileRequest) -> np.ndarray:
    """Execute a planned read: (tile_px, tile_px, 3) uint8 RGB."""
    region = handle.read_level(req.level, req.x_lv, req.y_lv, req.read_w, req.read_h)
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

    The square covers `tile_px * mpp / mpp_x` level-0 px across and `tile_px * mpp / mpp_y` down.
    Raises PlutoError when `mpp` is finer than native on either axis by more than `rel_tol`,
    SlideError(unreadable) when the pixels cannot be decoded.
    """
    handle = _handle(path_or_handle)
    return read_request(handle, plan_read(handle.info, x_l0, y_l0, mpp, tile_px, rel_tol))


def read_thumbnail(
    path_or_handle: str | Path | SlideHandle, mpp: float, rel_tol: float = MPP_REL_TOL
) -> tuple[np.ndarray, float]:
    """Whole slide at `mpp` um/px: (RGB H x W x 3 uint8, downsample = level-0 px per thumbnail px).

    One downsample on both axes, so `mpp` is reached on the coarser axis (`info.mpp`); on a slide
    whose pixels are not square the thumbnail's are not either ((mpp_x, mpp_y) x downsample um).

    Built from the pyramid (never from the slide's associated thumbnail/label/macro images), block by
    block (`reduce_level`), so a single-level 100k-px slide costs a few blocks of memory, not its level.
    """
    handle = _handle(path_or_handle)
    info = handle.info
    level = best_level(info, mpp, rel_tol)
    scale = info.mpp / mpp  # thumbnail px per level-0 px
    tw, th = max(1, int(round(info.width * scale))), max(1, int(round(info.height * scale)))
    return reduce_level(handle, level, tw, th), info.width / tw


def reduce_level(handle: SlideHandle, level: int, w: int, h: int, block_px: int = THUMB_BLOCK_PX) -> np.ndarray:
    """`level` area-resized to (h, w), reading at most a `block_px`-square block of it at a time.

    An area resize is separable and linear, so each block adds its share to the output. A block is
    first box-reduced by an integer factor g (blocks start at multiples of g, so this is exact), then
    spread over the output pixels it overlaps with exact area weights (`_area_weights`). When the
    level is an integer multiple of the output, g is that multiple and the result equals one area
    resize of the whole level; otherwise g is a quarter of the ratio, and detail inside a g-px box
    is treated as uniform. Peak memory: one block, the float output, the decoded-tile cache.
    """
    lw, lh = handle.info.level_dims[level]
    sx, sy = lw / w, lh / h
    g = int(sx) if sx == sy == int(sx) else max(1, int(min(sx, sy) / 4))
    step = g * max(1, block_px // g)
    wx, wy = _area_weights(w, lw, g), _area_weights(h, lh, g)
    out = np.zeros((h, w, 3), np.float32)
    for y in range(0, lh, step):
        bh = min(step, lh - y)
        r0, r1 = int(y / sy), min(h, int(np.ceil((y + bh) / sy)))
        for x in range(0, lw, step):
            bw = min(step, lw - x)
            c0, c1 = int(x / sx), min(w, int(np.ceil((x + bw) / sx)))
            red = _box_reduce(handle.read_level(level, x, y, bw, bh), g).astype(np.float32)
            rh, rw = red.shape[:2]
            cols = wx[c0:c1, x // g : x // g + rw] @ red.transpose(1, 0, 2).reshape(rw, -1)  # (c1 - c0, rh * 3)
            cols = cols.reshape(c1 - c0, rh, 3).transpose(1, 0, 2).reshape(rh, -1)
            out[r0:r1, c0:c1] += (wy[r0:r1, y // g : y // g + rh] @ cols).reshape(r1 - r0, c1 - c0, 3)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _box_reduce(block: np.ndarray, f: int) -> np.ndarray:
    """Mean of each f x f box of `block` (a partial last row/column of boxes: the mean of what it holds)."""
    bh, bw = block.shape[:2]
    if f == 1:
        return block
    if bh % f == 0 and bw % f == 0:
        return cv2.resize(block, (bw // f, bh // f), interpolation=cv2.INTER_AREA)  # integer ratio: the box mean
    sums = np.add.reduceat(np.add.reduceat(block.astype(np.uint32), np.arange(0, bh, f), axis=0), np.arange(0, bw, f), axis=1)
    counts = np.minimum(f, bh - np.arange(0, bh, f))[:, None] * np.minimum(f, bw - np.arange(0, bw, f))[None, :]
    return np.rint(sums / counts[..., None]).astype(np.uint8)


def _area_weights(n_out: int, extent: int, f: int) -> "Any":
    """(n_out, ceil(extent / f)) area weights: input pixel i covers level px [i f, min((i+1) f, extent)),
    output pixel r covers [r s, (r+1) s) with s = extent / n_out; each output row sums to 1."""
    from scipy import sparse

    n_in = -(-extent // f)
    lo = np.arange(n_in, dtype=np.float64) * f
    hi = np.minimum(lo + f, extent)
    s = extent / n_out
    first = np.minimum((lo / s).astype(np.int64), n_out - 1)
    rows, cols, vals = [], [], []
    for k in range(int(np.ceil(f / s)) + 1):  # an input pixel overlaps at most ceil(f/s) + 1 outputs
        r = first + k
        ok = r < n_out
        overlap = np.minimum(hi, (r + 1) * s) - np.maximum(lo, r * s)
        ok &= overlap > 1e-9
        rows.append(r[ok]), cols.append(np.flatnonzero(ok)), vals.append(overlap[ok] / s)
    return sparse.csr_matrix((np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))), shape=(n_out, n_in))
