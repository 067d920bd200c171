"""Pixels proven right: one tile of the read path compared with an independent decoder of the same file.

The read path decodes TIFF tiles itself (fast, exact level addressing) and trusts its table of
proven codec and colour-space combinations (`tiff_tiles.proven`). Pre-flight checks that on each
slide: the level-0 tile at the centre, read as a tile read would, against OpenSlide where it opens
the file (libtiff or its own JPEG2000 decoder, with the TIFF's colour interpretation), else against
Pillow decoding the same tile bytes (`TiffTiles.reference_tile`). A slide whose read disagrees is
quarantined `decode_mismatch`, never ingested with plausible-looking wrong colours.
"""

from __future__ import annotations

import numpy as np

from pluto.errors import QuarantineReason, SlideError
from pluto.slides.handles import SlideHandle, read_openslide
from pluto.slides.metadata import open_openslide

MAX_MEAN_ABS_DIFF = 2.0  # 0-255 scale: above it the read is not the reference's pixels
MAX_ABS_DIFF = 32  # a few pixels off by more than this is a wrong decode, not codec rounding


def decode_difference(handle: SlideHandle) -> tuple[float, int, str] | None:
    """(mean |read - reference|, max, reference name) on the centre level-0 tile, or None when OpenSlide
    decodes every read itself (it is the reference). Raises SlideError when either decoder fails."""
    tiles = handle.tiles
    if tiles is None:
        return None
    info = handle.info
    x, y, w, h = tiles.tile_box(0, info.width // 2, info.height // 2)
    read = handle.read_level(0, x, y, w, h)
    reference = _openslide_region(handle, x, y, w, h)
    name = "OpenSlide"
    if reference is None:
        reference, name = tiles.reference_tile(0, x, y), "Pillow"
    diff = np.abs(read.astype(np.int16) - reference.astype(np.int16))
    return float(diff.mean()), int(diff.max()), name


def _openslide_region(handle: SlideHandle, x: int, y: int, w: int, h: int) -> np.ndarray | None:
    """The level-0 region through OpenSlide: the handle's own, or (OME-TIFF) a temporary one when
    OpenSlide opens the file with the same level 0; None when it does not."""
    if handle.openslide is not None:
        return handle.read_level_openslide(0, x, y, w, h)
    try:
        osr = open_openslide(handle.path)
    except SlideError:
        return None
    try:
        if tuple(osr.level_dimensions[0]) != (handle.info.width, handle.info.height):
            return None
        return read_openslide(osr, handle.path, 0, x, y, w, h)
    except SlideError:  # opens but cannot decode it: no OpenSlide reference
        return None
    finally:
        osr.close()


def check_decode(handle: SlideHandle) -> None:
    """Raise SlideError(decode_mismatch) when the read path's pixels disagree with the reference."""
    found = decode_difference(handle)
    if found is None:
        return
    mean, peak, name = found
    if mean > MAX_MEAN_ABS_DIFF or peak > MAX_ABS_DIFF:
        raise SlideError(
            handle.path, QuarantineReason.decode_mismatch,
            f"{handle.reader} read differs from {name} on the centre level-0 tile: mean {mean:.1f}, max {peak} "
            f"(limits {MAX_MEAN_ABS_DIFF:g}, {MAX_ABS_DIFF})",
        )
