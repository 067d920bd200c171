"""Direct pixel access to the tiled (or stripped) pages of a TIFF-based slide.

OpenSlide addresses levels through level-0 coordinates divided by a float downsample, so on slides
whose level sizes are not exact multiples (almost all real ones) a read lands on fractional level
pixels and is resampled. Here a level is addressed in its own integer pixels: the tiles (or strips,
a window read decodes only the strips it touches) that cover the region are read with `os.pread`
(thread-safe, fork-safe), decoded and pasted. Label and macro pages are never mapped.

Only codec and colour-space combinations proven equal to an independent reference are decoded
here (`proven`; `tests/slides/test_formats.py` checks each against a fixture's true pixels): a
TIFF's colour interpretation lives in its tags, and decoding YCbCr-LZW, CMYK or Aperio's YCbCr
JPEG2000 (33003) as if they were RGB reads plausible-looking wrong colours. Anything else is read
by OpenSlide, or refused.

Decoding is most of a read's cost. JPEG tiles (what scanners write) go straight to libjpeg-turbo
through `imagecodecs.jpeg8_decode` with the colour spaces fixed once per level; measured on 256-px
tiles it beat tifffile's per-tile decode wrapper by ~5%, `cv2.imdecode` by ~25% and PIL by ~2.5x
(decoding into a preallocated buffer gained nothing measurable). Other codecs use the page's
tifffile decoder. Decoded tiles go through the process-wide `tile_cache`, which is what makes
grid-order reads (neighbours share tiles) cheap. `reference_tile` decodes the same bytes through
Pillow (libtiff, OpenJPEG, libwebp) instead, for the pre-flight check.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from pluto.errors import QuarantineReason, SlideError
from pluto.slides.decoded_tiles import new_owner, tile_cache

BACKGROUND = 255  # value of pixels outside the slide (white glass)
_JPEG = 7  # TIFF Compression: JPEG ("new-style", what SVS and generic pyramids use)
_RGB, _YCBCR = 2, 6  # TIFF PhotometricInterpretation
# TIFF Compression codes whose RGB pixels tifffile/imagecodecs decode as stored: none, LZW, JPEG,
# Adobe and old-style deflate, PackBits (32773, e.g. the MoNuSeg regions), Aperio JPEG2000 RGB (33005),
# JPEG2000 (34712), zstd, WebP
_PROVEN_RGB = frozenset({1, 5, _JPEG, 8, 32773, 32946, 33005, 34712, 50000, 50001})
_PILLOW_CODESTREAMS = frozenset({33005, 34712, 50001})  # tiles that are whole JPEG2000 / WebP images


@dataclass(frozen=True)
class _Level:
    width: int
    height: int
    tile_w: int
    tile_h: int
    tiles_across: int
    offsets: tuple[int, ...]
    bytecounts: tuple[int, ...]
    decode: Callable[[bytes, int], np.ndarray]
    reference: Callable[[bytes, int], np.ndarray]  # an independent decoder of the same bytes (Pillow)


class TiffTiles:
    """Tiles of the mapped levels of one TIFF file; decoded tiles live in the process's `tile_cache`."""

    def __init__(self, path: str, pages: list[Any]) -> None:
        """`pages`: one tifffile page per level, finest first, each `proven` (the caller checks)."""
        self.path = path
        self._owner = new_owner()
        self.levels = tuple(_level(page) for page in pages)
        self._fd = os.open(path, os.O_RDONLY)

    @classmethod
    def for_levels(cls, path: str, level_dims: tuple[tuple[int, int], ...]) -> "TiffTiles | None":
        """A reader when every level (e.g. OpenSlide's) is a tiled page of a proven combination, else None."""
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                pages = [p for p in tif.pages if p.is_tiled and proven(p)]
                by_dims = {(p.imagewidth, p.imagelength): p for p in reversed(pages)}  # first page of a size wins
                if not all(wh in by_dims for wh in level_dims):
                    return None
                return cls(path, [by_dims[wh] for wh in level_dims])
        except (tifffile.TiffFileError, ValueError, OSError):
            return None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            tile_cache().drop(self._owner)

    def _bytes(self, level: int, index: int) -> bytes:
        lv = self.levels[level]
        nbytes = lv.bytecounts[index]
        data = os.pread(self._fd, nbytes, lv.offsets[index])
        if len(data) != nbytes:
            raise SlideError(self.path, QuarantineReason.truncated, f"level {level} tile {index} cut short")
        return data

    def _decoded(self, level: int, index: int, decode: Callable[[bytes, int], np.ndarray]) -> np.ndarray:
        lv = self.levels[level]
        if lv.bytecounts[index] == 0:
            return np.full((lv.tile_h, lv.tile_w, 3), BACKGROUND, np.uint8)
        data = self._bytes(level, index)
        try:
            arr = decode(data, index)
        except Exception as exc:  # codec errors come in many types (imagecodecs.*Error, ValueError, ...)
            raise SlideError(self.path, QuarantineReason.unreadable, f"level {level} tile {index}: {exc}") from exc
        return _full_tile(arr, lv.tile_h, lv.tile_w)

    def _tile(self, level: int, index: int) -> np.ndarray:
        """Decoded tile `index` of `level`, (tile_h, tile_w, 3) uint8, read-only (cached)."""
        cache = tile_cache()
        key = (self._owner, level, index)
        hit = cache.get(key)
        if hit is not None:
            return hit
        return cache.put(key, self._decoded(level, index, self.levels[level].decode))

    def tile_box(self, level: int, x_lv: int, y_lv: int) -> tuple[int, int, int, int]:
        """(x, y, w, h) in level px of the tile (or strip) holding level pixel (x_lv, y_lv), clipped to the level."""
        lv = self.levels[level]
        x, y = x_lv // lv.tile_w * lv.tile_w, y_lv // lv.tile_h * lv.tile_h
        return x, y, min(lv.tile_w, lv.width - x), min(lv.tile_h, lv.height - y)

    def reference_tile(self, level: int, x_lv: int, y_lv: int) -> np.ndarray:
        """The tile (or strip) holding level pixel (x_lv, y_lv) decoded by Pillow, clipped like `tile_box`."""
        lv = self.levels[level]
        index = (y_lv // lv.tile_h) * lv.tiles_across + x_lv // lv.tile_w
        _, _, w, h = self.tile_box(level, x_lv, y_lv)
        return self._decoded(level, index, lv.reference)[:h, :w]

    def read(self, level: int, x_lv: int, y_lv: int, w: int, h: int) -> np.ndarray:
        """RGB (h, w, 3) uint8 of level pixels [x_lv, x_lv+w) x [y_lv, y_lv+h); outside is white."""
        lv = self.levels[level]
        out = np.full((h, w, 3), BACKGROUND, np.uint8)
        x0, y0 = max(x_lv, 0), max(y_lv, 0)
        x1, y1 = min(x_lv + w, lv.width), min(y_lv + h, lv.height)
        if x0 >= x1 or y0 >= y1:
            return out
        for ty in range(y0 // lv.tile_h, (y1 - 1) // lv.tile_h + 1):
            for tx in range(x0 // lv.tile_w, (x1 - 1) // lv.tile_w + 1):
                tile = self._tile(level, ty * lv.tiles_across + tx)
                gx, gy = tx * lv.tile_w, ty * lv.tile_h
                sx0, sy0 = max(x0, gx), max(y0, gy)
                sx1, sy1 = min(x1, gx + lv.tile_w), min(y1, gy + lv.tile_h)
                out[sy0 - y_lv : sy1 - y_lv, sx0 - x_lv : sx1 - x_lv] = tile[sy0 - gy : sy1 - gy, sx0 - gx : sx1 - gx]
        return out


def proven(page: Any) -> bool:
    """The page's codec and colour space are decoded here exactly as an independent reference would.

    8-bit, 3 interleaved samples, no extra samples; RGB photometric with a codec of `_PROVEN_RGB`,
    or YCbCr JPEG (libjpeg converts). YCbCr with other codecs, CMYK, palette, grey, alpha, 16-bit,
    and Aperio's YCbCr JPEG2000 (33003, tagged RGB) are not.
    """
    return (
        page.dtype == np.uint8
        and page.samplesperpixel == 3
        and not page.extrasamples
        and page.planarconfig == 1
        and page.imagedepth == 1
        and (
            (page.photometric == _RGB and page.compression in _PROVEN_RGB)
            or (page.photometric == _YCBCR and page.compression == _JPEG)
        )
    )


def describe(page: Any) -> str:
    """Codec and colour space of a page for messages, e.g. 'LZW/YCBCR, 3x8 bit'."""
    names = (getattr(tag, "name", str(tag)) for tag in (page.compression, page.photometric))
    return f"{'/'.join(names)}, {page.samplesperpixel}x{page.bitspersample} bit"


def _level(page: Any) -> _Level:
    """A level over a tiled page, or over a stripped one with each strip as a full-width tile."""
    tile_w, tile_h = (page.tilewidth, page.tilelength) if page.is_tiled else (page.imagewidth, min(page.rowsperstrip, page.imagelength))
    return _Level(
        width=page.imagewidth,
        height=page.imagelength,
        tile_w=tile_w,
        tile_h=tile_h,
        tiles_across=-(-page.imagewidth // tile_w),
        offsets=tuple(int(o) for o in page.dataoffsets),
        bytecounts=tuple(int(n) for n in page.databytecounts),
        decode=_decoder(page),
        reference=_reference_decoder(page),
    )


def _decoder(page: Any) -> Callable[[bytes, int], np.ndarray]:
    """(tile bytes, tile index) -> decoded array, for one page.

    JPEG with RGB or YCbCr photometric (no alpha) goes to libjpeg-turbo directly, with the colour
    spaces tifffile would choose: YCbCr -> RGB; RGB without a JFIF marker is stored untransformed
    (Aperio SVS), so libjpeg must not convert it. Anything else uses the page's tifffile decoder.
    """
    if page.compression == _JPEG and page.photometric in (_RGB, _YCBCR) and not page.extrasamples:
        import imagecodecs

        tables = page.jpegtables
        colorspace = _RGB if page.photometric == _RGB and not page.is_jfif else None
        return lambda data, index: imagecodecs.jpeg8_decode(
            data, tables=tables, colorspace=colorspace, outcolorspace=_RGB
        )
    decode, tables = page.decode, page.jpegtables
    return lambda data, index: decode(data, index, jpegtables=tables, _fullsize=True)[0]


def _reference_decoder(page: Any) -> Callable[[bytes, int], np.ndarray]:
    """(tile bytes, tile index) -> RGB through Pillow: libtiff reads the tile re-wrapped in a one-tile
    TIFF with the page's codec and colour tags; JPEG2000 and WebP tiles are whole images Pillow opens."""
    import io

    import tifffile
    from PIL import Image

    compression, photometric = int(page.compression), int(page.photometric)
    if compression in _PILLOW_CODESTREAMS:
        return lambda data, index: np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    kwargs: dict[str, Any] = {}
    if compression == _JPEG:  # keep the stored colour space; tifffile would otherwise tag RGB as YCbCr
        subsampling = page.subsampling if photometric == _YCBCR else (1, 1)
        kwargs = {"jpegtables": page.jpegtables, "subsampling": subsampling, "compressionargs": {"outcolorspace": photometric}}
    if int(page.predictor) != 1:
        kwargs["predictor"] = int(page.predictor)
    tiled, width, height, rows, samples = page.is_tiled, page.imagewidth, page.imagelength, page.rowsperstrip, page.samplesperpixel
    tile_w, tile_h = (page.tilewidth, page.tilelength) if tiled else (width, 0)

    def decode(data: bytes, index: int) -> np.ndarray:
        h = tile_h or min(rows, height - index * rows)
        buf = io.BytesIO()
        with tifffile.TiffWriter(buf) as tif:
            tif.write(iter([data]), shape=(h, tile_w, samples), dtype=np.uint8, photometric=photometric,
                      compression=compression, metadata=None, **({"tile": (h, tile_w)} if tiled else {"rowsperstrip": h}), **kwargs)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))

    return decode


def _full_tile(arr: np.ndarray, tile_h: int, tile_w: int) -> np.ndarray:
    """(tile_h, tile_w, 3) uint8 from a decoded tile (pads a short edge tile or strip with white)."""
    arr = arr.reshape(arr.shape[-3], arr.shape[-2], -1)[..., :3]
    if arr.shape[:2] != (tile_h, tile_w):
        full = np.full((tile_h, tile_w, 3), BACKGROUND, np.uint8)
        h, w = min(arr.shape[0], tile_h), min(arr.shape[1], tile_w)
        full[:h, :w] = arr[:h, :w]
        return full
    return np.ascontiguousarray(arr)
