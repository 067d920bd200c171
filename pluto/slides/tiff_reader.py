"""Slides OpenSlide does not read, opened with tifffile: OME-TIFF and TIFFs OpenSlide cannot open.

OpenSlide sees one level of an OME-TIFF whose pyramid sits in SubIFDs and ignores the OME
`PhysicalSizeX/Y`; it does not open stripped TIFFs, nor tiled ones in JPEG2000 (34712) or WebP.
Here the pyramid is tifffile's first image series with its levels (OME SubIFDs, or reduced-resolution
pages of a generic pyramid), the resolution comes from the OME pixel sizes or else the TIFF resolution
tags, and pixels are read by `TiffTiles` (tiles, or strips for a windowed read of a stripped TIFF).
Only levels in a codec and colour space `proven` equal to an independent decoder are accepted.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pluto.errors import QuarantineReason, SlideError
from pluto.slides.metadata import MAX_DIMENSION_PX, MPP_RANGE, SlideInfo, checked_info, float_or_none
from pluto.slides.tiff_tiles import TiffTiles, describe, proven

# micrometres per unit of OME's PhysicalSizeXUnit (default "µm") and of TIFF's ResolutionUnit
_UM_PER_OME_UNIT = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "Å": 1e-4, "mm": 1e3, "cm": 1e4, "m": 1e6}
_UM_PER_RESUNIT = {2: 25_400.0, 3: 1e4, 4: 1e3, 5: 1.0}  # inch, centimetre, millimetre, micrometre


def is_ome_tiff(path: str | Path) -> bool:
    """True for a TIFF whose first page carries OME-XML (read by this module, not OpenSlide)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return bool(tif.is_ome)
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError):
        return False


def open_tiff(
    path: str | Path,
    mpp_override: float | None = None,
    *,
    mpp_range: tuple[float, float] = MPP_RANGE,
    max_dimension_px: int = MAX_DIMENSION_PX,
) -> tuple[SlideInfo, TiffTiles]:
    """SlideInfo and a tile reader of the first image series. Raises SlideError (not_a_slide when
    tifffile cannot parse it or it is not an 8-bit RGB image, unreadable for an unproven codec)."""
    import tifffile

    path = str(path)
    try:
        with tifffile.TiffFile(path) as tif:
            pages = _level_pages(path, tif)
            mpp_xy = _ome_mpp(tif.ome_metadata) if tif.is_ome else (None, None)
            if mpp_xy[0] is None:
                mpp_xy = _tag_mpp(pages[0])
            vendor = "ome-tiff" if tif.is_ome else "tiff"
            info = checked_info(
                path, vendor, tuple((p.imagewidth, p.imagelength) for p in pages), mpp_xy, None, mpp_override,
                mpp_range=mpp_range, max_dimension_px=max_dimension_px,
            )
            return info, TiffTiles(path, pages)
    except (tifffile.TiffFileError, ValueError, IndexError, KeyError) as exc:
        raise SlideError(path, QuarantineReason.not_a_slide, f"tifffile: {exc}") from exc


def _level_pages(path: str, tif: Any) -> list[Any]:
    """One page per pyramid level of the first series, finest first; all proven 8-bit RGB."""
    series = tif.series[0]
    pages = []
    for level in series.levels:
        if len(level.pages) != 1 or level.keyframe.samplesperpixel < 3:
            raise SlideError(path, QuarantineReason.not_a_slide, f"series shape {series.shape} ({series.axes}) is not one RGB image")
        pages.append(level.keyframe)
    for k, page in enumerate(pages):
        if not proven(page):
            raise SlideError(path, QuarantineReason.unreadable, f"level {k} is {describe(page)}: no decoder proven for it")
    if any(b.imagewidth > a.imagewidth or b.imagelength > a.imagelength for a, b in zip(pages, pages[1:])):
        raise SlideError(path, QuarantineReason.not_a_slide, "levels do not shrink")
    return pages


def _ome_mpp(xml: str | None) -> tuple[float | None, float | None]:
    """(mpp_x, mpp_y) from the first OME Pixels element's PhysicalSizeX/Y and their units."""
    match = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", xml or "")
    if not match:
        return None, None
    attrs = dict(re.findall(r'(\w+)="([^"]*)"', match.group(0)))
    out = []
    for axis in ("X", "Y"):
        size = float_or_none(attrs.get(f"PhysicalSize{axis}"))
        scale = _UM_PER_OME_UNIT.get(attrs.get(f"PhysicalSize{axis}Unit", "µm"))
        out.append(size * scale if size and scale else None)
    return (out[0], out[1]) if None not in out else (None, None)


def _tag_mpp(page: Any) -> tuple[float | None, float | None]:
    """(mpp_x, mpp_y) from the TIFF resolution tags when their unit is a physical one."""
    scale = _UM_PER_RESUNIT.get(int(page.resolutionunit))
    rx, ry = page.resolution
    if scale is None or not rx or not ry:
        return None, None
    return scale / rx, scale / ry
