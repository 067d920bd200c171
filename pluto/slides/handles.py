"""Open slides and a per-process LRU pool of them.

Opening a slide costs milliseconds (headers, tile tables); a training loader reads thousands of
tiles per second from a few thousand slides, so handles are kept open in a bounded LRU pool. The
pool belongs to one process: after a fork (DataLoader workers) the child sees a different pid
and starts an empty pool, never using or closing the parent's handles. Evicted handles are closed.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from pluto.errors import QuarantineReason, SlideError
from pluto.slides.metadata import MAX_DIMENSION_PX, MPP_RANGE, SlideInfo, check_file, info_from_openslide, open_openslide
from pluto.slides.tiff_reader import is_ome_tiff, open_tiff
from pluto.slides.tiff_tiles import BACKGROUND, TiffTiles


class SlideHandle:
    """One open slide: `.info` plus level reads in level pixels, whichever reader serves the format.

    `reader` names it: "openslide+direct" (OpenSlide's metadata, every level a TIFF page of a proven
    codec and colour space, decoded here; Aperio SVS, generic pyramidal TIFF), "openslide" (anything
    else OpenSlide opens: other vendors, DICOM, TIFF codecs or colour spaces not proven here),
    "tifffile" (OME-TIFF, and TIFFs OpenSlide cannot open; see `tiff_reader`).
    """

    def __init__(
        self,
        path: str | Path,
        mpp_override: float | None = None,
        *,
        mpp_range: tuple[float, float] = MPP_RANGE,
        max_dimension_px: int = MAX_DIMENSION_PX,
    ) -> None:
        self.path = str(path)
        self._osr: Any = None
        self._tiles: TiffTiles | None = None
        limits = {"mpp_range": mpp_range, "max_dimension_px": max_dimension_px}
        if not os.path.exists(self.path):  # an S3 slide whose cached copy was evicted comes back
            from pluto.slides.s3_source import refetch

            refetch(self.path)
        check_file(self.path)
        if not is_ome_tiff(self.path):
            try:
                self._osr = open_openslide(self.path)
            except SlideError as exc:
                if exc.reason not in (QuarantineReason.not_a_slide, QuarantineReason.unreadable) or not _is_tiff(self.path):
                    raise
        if self._osr is None:  # OME-TIFF, or a TIFF OpenSlide cannot open
            self.info, self._tiles = open_tiff(self.path, mpp_override, **limits)
            self.reader = "tifffile"
            return
        try:
            self.info: SlideInfo = info_from_openslide(self.path, self._osr, mpp_override, **limits)
        except SlideError:
            self._osr.close()
            raise
        self._tiles = TiffTiles.for_levels(self.path, self.info.level_dims)
        self.reader = "openslide" if self._tiles is None else "openslide+direct"

    @property
    def direct(self) -> bool:
        """True when levels are read from the TIFF tiles directly (integer level addressing)."""
        return self._tiles is not None

    def read_level(self, level: int, x_lv: int, y_lv: int, w: int, h: int) -> np.ndarray:
        """RGB (h, w, 3) uint8 of `level` pixels starting at level pixel (x_lv, y_lv); outside is white."""
        if self._tiles is not None:
            return self._tiles.read(level, x_lv, y_lv, w, h)
        return self._read_openslide(level, x_lv, y_lv, w, h)

    def read_level_openslide(self, level: int, x_lv: int, y_lv: int, w: int, h: int) -> np.ndarray:
        """Same region through OpenSlide (the reference of the direct path; the "tifffile" reader has none)."""
        if self._osr is None:
            raise SlideError(self.path, QuarantineReason.not_a_slide, "not opened by OpenSlide")
        return self._read_openslide(level, x_lv, y_lv, w, h)

    @property
    def series_uid(self) -> str:
        """DICOM SeriesInstanceUID ("" for other formats): the files of one series are one slide."""
        return "" if self._osr is None else str(self._osr.properties.get("dicom.SeriesInstanceUID", ""))

    @property
    def tiles(self) -> TiffTiles | None:
        """The direct tile reader (None when OpenSlide decodes every read)."""
        return self._tiles

    def _read_openslide(self, level: int, x_lv: int, y_lv: int, w: int, h: int) -> np.ndarray:
        return read_openslide(self._osr, self.path, level, x_lv, y_lv, w, h)

    @property
    def openslide(self) -> Any:
        """The underlying OpenSlide object, None for the "tifffile" reader (never read label/macro images)."""
        return self._osr

    def close(self) -> None:
        if self._tiles is not None:
            self._tiles.close()
        if self._osr is not None:
            self._osr.close()

    def __enter__(self) -> "SlideHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_openslide(osr: Any, path: str, level: int, x_lv: int, y_lv: int, w: int, h: int) -> np.ndarray:
    """RGB (h, w, 3) uint8 of `level` px from an OpenSlide object, transparent pixels on white."""
    import openslide

    ds = osr.level_downsamples[level]
    try:
        rgba = np.asarray(osr.read_region((int(round(x_lv * ds)), int(round(y_lv * ds))), level, (w, h)))
    except openslide.OpenSlideError as exc:
        raise SlideError(path, QuarantineReason.unreadable, f"level {level}: {exc}") from exc
    alpha = rgba[..., 3:4].astype(np.uint16)
    rgb = rgba[..., :3].astype(np.uint16)
    return ((rgb * alpha + BACKGROUND * (255 - alpha)) // 255).astype(np.uint8)


def _is_tiff(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")


def open_slide(path: str | Path, mpp_override: float | None = None, **limits: Any) -> SlideHandle:
    """A new handle owned by the caller (close it, or use `with`). Raises SlideError."""
    return SlideHandle(path, mpp_override, **limits)


class _Pool:
    def __init__(self, max_handles: int) -> None:
        self.max_handles = max_handles
        self.pid = os.getpid()
        self.handles: OrderedDict[tuple[str, float | None], SlideHandle] = OrderedDict()
        self.lock = threading.Lock()


_POOL = _Pool(32)


def _pool() -> _Pool:
    global _POOL
    if _POOL.pid != os.getpid():  # forked child: the parent's handles are not ours to use or close
        _POOL = _Pool(_POOL.max_handles)
    return _POOL


def configure_pool(max_handles: int) -> None:
    """Set the pool size of this process (SlideSettings.handle_pool_size); evicts the excess."""
    if max_handles < 1:
        raise ValueError(f"max_handles must be >= 1, got {max_handles}")
    pool = _pool()
    with pool.lock:
        pool.max_handles = max_handles
        _evict(pool)


def configure_slide_access(handle_pool_size: int, tile_cache_mib: float) -> None:
    """Size this process's handle pool and decoded-tile cache (SlideSettings); forked workers inherit both."""
    from pluto.slides.decoded_tiles import configure_tile_cache

    configure_pool(handle_pool_size)
    configure_tile_cache(tile_cache_mib)


def clear_pool() -> None:
    """Close every pooled handle of this process."""
    pool = _pool()
    with pool.lock:
        while pool.handles:
            pool.handles.popitem(last=False)[1].close()


def close_pooled(path: str | Path) -> None:
    """Close this process's pooled handles of `path` (its file is about to be deleted)."""
    target = os.path.abspath(str(path))
    pool = _pool()
    with pool.lock:
        for key in [k for k in pool.handles if k[0] == target]:
            pool.handles.pop(key).close()


def pool_paths() -> list[str]:
    """Paths of the pooled handles of this process, least recently used first."""
    pool = _pool()
    with pool.lock:
        return [path for path, _ in pool.handles]


def _evict(pool: _Pool) -> None:
    while len(pool.handles) > pool.max_handles:
        pool.handles.popitem(last=False)[1].close()


def get_handle(path: str | Path, mpp_override: float | None = None) -> SlideHandle:
    """The pooled handle of `path` in this process (opened on first use, LRU-evicted and closed)."""
    key = (os.path.abspath(str(path)), mpp_override)
    pool = _pool()
    with pool.lock:
        handle = pool.handles.get(key)
        if handle is not None:
            pool.handles.move_to_end(key)
            return handle
    handle = SlideHandle(key[0], mpp_override)
    with pool.lock:
        existing = pool.handles.get(key)
        if existing is not None:
            handle.close()
            pool.handles.move_to_end(key)
            return existing
        pool.handles[key] = handle
        _evict(pool)
    return handle
