"""Write generic tiled pyramidal TIFFs (what OpenSlide calls generic-tiff) with tifffile.

Used to make test and benchmark slides from real tissue: any level-0 size (odd sizes included),
any integer level ratio, MPP in the resolution tags or omitted. Level k+1 is the exact box
average of level k (padded with white to a multiple of the ratio), streamed strip by strip so a
40k x 40k level 0 never sits in memory; reduced levels are buffered in a disk memmap when large.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from pluto.slides.tiff_tiles import BACKGROUND

RegionSource = Callable[[int, int, int, int], np.ndarray]  # (x, y, w, h) level-0 px -> (h, w, 3) uint8
_MEMMAP_BYTES = 256 * 2**20


def pyramid_dims(width: int, height: int, n_levels: int, level_ratio: int = 2) -> list[tuple[int, int]]:
    """(w, h) of each level: ceil of level-0 size over ratio**k."""
    return [(math.ceil(width / level_ratio**k), math.ceil(height / level_ratio**k)) for k in range(n_levels)]


def write_pyramid(
    path: str | Path,
    source: np.ndarray | RegionSource,
    mpp: float | None,
    n_levels: int,
    tile_px: int = 256,
    compression: str = "jpeg",
    *,
    level_ratio: int = 2,
    quality: int = 90,
    size: tuple[int, int] | None = None,
) -> Path:
    """Write `source` (an RGB H x W x 3 array, or a region callable with `size=(w, h)`) as a pyramid.

    `mpp` None writes no physical resolution (ResolutionUnit NONE), i.e. a slide without MPP.
    Written to a temporary name and renamed, so a reader never sees a half-written file.
    """
    path = Path(path)
    if isinstance(source, np.ndarray):
        height, width = source.shape[:2]
        array = source
        source = lambda x, y, w, h: array[y : y + h, x : x + w]  # noqa: E731
    elif size is None:
        raise ValueError("a callable source needs size=(width, height)")
    else:
        width, height = size
    dims = pyramid_dims(width, height, n_levels, level_ratio)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    buffers: list[str] = []
    try:
        _write_levels(tmp, source, dims, mpp, tile_px, compression, level_ratio, quality, buffers)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a slide is shared data
        os.replace(tmp, path)
    finally:
        for name in [tmp, *buffers]:
            if os.path.exists(name):
                os.unlink(name)
    return path


def _write_levels(tmp, source, dims, mpp, tile_px, compression, ratio, quality, buffers) -> None:
    import tifffile

    strips = _source_strips(source, *dims[0], tile_px)
    compressionargs = {"level": quality} if compression == "jpeg" else None
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for level, (lw, lh) in enumerate(dims):
            nxt = _buffer(dims[level + 1], tmp, buffers) if level + 1 < len(dims) else None
            resolution = {}
            if mpp is not None:
                px_per_cm = 1e4 / (mpp * ratio**level)
                resolution = {"resolution": (px_per_cm, px_per_cm), "resolutionunit": "CENTIMETER"}
            tif.write(
                _tiles(strips, lw, lh, tile_px, nxt, ratio),
                shape=(lh, lw, 3),
                dtype=np.uint8,
                tile=(tile_px, tile_px),
                photometric="rgb",
                compression=compression,
                compressionargs=compressionargs,
                subfiletype=0 if level == 0 else 1,
                metadata=None,
                **resolution,
            )
            if nxt is not None:
                strips = _array_strips(nxt, tile_px)


def _buffer(dims: tuple[int, int], tmp: str, buffers: list[str]) -> np.ndarray:
    w, h = dims
    if w * h * 3 <= _MEMMAP_BYTES:
        return np.empty((h, w, 3), np.uint8)
    name = f"{tmp}.level{len(buffers) + 1}"
    buffers.append(name)
    return np.lib.format.open_memmap(name, mode="w+", dtype=np.uint8, shape=(h, w, 3))


def _source_strips(source: RegionSource, width: int, height: int, rows: int) -> Iterator[np.ndarray]:
    for y in range(0, height, rows):
        yield np.asarray(source(0, y, width, min(rows, height - y)), dtype=np.uint8)


def _array_strips(array: np.ndarray, rows: int) -> Iterator[np.ndarray]:
    for y in range(0, array.shape[0], rows):
        yield np.asarray(array[y : y + rows])


def _tiles(strips: Iterator[np.ndarray], width: int, height: int, tile_px: int, nxt: np.ndarray | None, ratio: int) -> Iterator[np.ndarray]:
    """Tiles of one level in row-major order, after box-reducing each strip's rows into `nxt`.

    The reduction happens before a strip's tiles are yielded because tifffile stops pulling
    once it has the last tile.
    """
    pending = np.empty((0, width, 3), np.uint8)
    out_row = rows_seen = 0
    for strip in strips:
        rows_seen += strip.shape[0]
        if nxt is not None:
            pending = np.concatenate([pending, strip])
            if rows_seen >= height and pending.shape[0] % ratio:
                tail = np.full((ratio - pending.shape[0] % ratio, width, 3), BACKGROUND, np.uint8)
                pending = np.concatenate([pending, tail])
            n = (pending.shape[0] // ratio) * ratio
            out_row = _reduce_into(nxt, out_row, pending[:n], ratio)
            pending = pending[n:]
        padded = np.full((tile_px, -(-width // tile_px) * tile_px, 3), BACKGROUND, np.uint8)
        padded[: strip.shape[0], :width] = strip
        for x in range(0, width, tile_px):
            yield padded[:, x : x + tile_px]


def _reduce_into(nxt: np.ndarray, row: int, block: np.ndarray, ratio: int) -> int:
    """Box-average `block` (rows a multiple of `ratio`) into `nxt` starting at `row`; returns next row."""
    if block.shape[0] == 0:
        return row
    out_w = nxt.shape[1]
    padded = np.full((block.shape[0], out_w * ratio, 3), BACKGROUND, np.uint8)
    padded[:, : block.shape[1]] = block
    reduced = cv2.resize(padded, (out_w, block.shape[0] // ratio), interpolation=cv2.INTER_AREA)
    nxt[row : row + reduced.shape[0]] = reduced
    return row + reduced.shape[0]
