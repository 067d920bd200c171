"""Slide metadata in one shape: `SlideInfo`, built from a reader's header with the MPP source recorded.

MPP comes from, in order: an explicit override (a per-slide table the user supplies), the vendor
header (`openslide.mpp-x/y`, or OME `PhysicalSizeX/Y` for OME-TIFF), or the TIFF resolution tags
when their unit is a physical one (centimetre or inch). It is never inferred from objective power. Missing MPP raises
`SlideError(no_mpp)`; an MPP outside the sane range raises `bad_mpp`.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from pluto.errors import QuarantineReason, SlideError

MPP_RANGE = (0.05, 50.0)  # um/px; outside it a header value is not believed (defaults of SlideSettings)
MAX_DIMENSION_PX = 1_000_000  # header dims beyond this are quarantined as too_large
_TIFF_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_UM_PER_UNIT = {"centimeter": 1e4, "inch": 25_400.0}


@dataclass(frozen=True)
class SlideInfo:
    """Geometry and resolution of one slide. Sizes are level-0 px; `level_dims` are (w, h) per level."""

    path: str
    vendor: str
    width: int
    height: int
    level_dims: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]  # level-0 px per level px, from the level dimensions
    mpp_x: float | None
    mpp_y: float | None
    mpp_source: str  # "header" | "override" | "missing"
    objective: float | None

    @property
    def mpp(self) -> float:
        """The coarser axis's um per level-0 px: the finest resolution a read serves without upsampling
        either axis (tile geometry itself uses `mpp_xy`). Raises SlideError(no_mpp) when unknown."""
        return max(self.mpp_xy)

    @property
    def mpp_xy(self) -> tuple[float, float]:
        """(mpp_x, mpp_y) um per level-0 px; raises SlideError(no_mpp) when unknown."""
        if self.mpp_x is None or self.mpp_y is None:
            raise SlideError(self.path, QuarantineReason.no_mpp, "no MPP in header and no override")
        return self.mpp_x, self.mpp_y

    @property
    def levels(self) -> int:
        return len(self.level_dims)

    def level_mpp(self, level: int) -> float:
        """The coarser axis's um/px at `level`."""
        return self.mpp * self.level_downsamples[level]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["level_dims"] = [list(wh) for wh in self.level_dims]
        d["level_downsamples"] = list(self.level_downsamples)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SlideInfo":
        d = dict(d)
        d["level_dims"] = tuple((int(w), int(h)) for w, h in d["level_dims"])
        d["level_downsamples"] = tuple(float(x) for x in d["level_downsamples"])
        return cls(**d)


def level_downsamples_from_dims(level_dims: tuple[tuple[int, int], ...]) -> tuple[float, ...]:
    """Level-0 px per level px, exact where the level is a ceil/floor integer reduction.

    OpenSlide averages w0/w and h0/h and reports e.g. 2.000112 for a level of an odd-sized
    slide; reading with that float puts requests on fractional level pixels. When the level's
    dims equal ceil or floor of level-0 dims over an integer factor, that integer is the truth.
    """
    w0, h0 = level_dims[0]
    out = []
    for w, h in level_dims:
        f = round(((w0 / w) + (h0 / h)) / 2.0)
        exact = f >= 1 and all(
            dim in (math.ceil(dim0 / f), dim0 // f) for dim, dim0 in ((w, w0), (h, h0))
        )
        out.append(float(f) if exact else ((w0 / w) + (h0 / h)) / 2.0)
    return tuple(out)


def float_or_none(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def mpp_from_properties(props: Mapping[str, str]) -> tuple[float | None, float | None]:
    """(mpp_x, mpp_y) from vendor keys, else from TIFF resolution tags with a physical unit."""
    mx, my = float_or_none(props.get("openslide.mpp-x")), float_or_none(props.get("openslide.mpp-y"))
    if mx is not None and my is not None:
        return mx, my
    unit = str(props.get("tiff.ResolutionUnit", "")).lower()
    rx, ry = float_or_none(props.get("tiff.XResolution")), float_or_none(props.get("tiff.YResolution"))
    if unit in _UM_PER_UNIT and rx and ry:
        return _UM_PER_UNIT[unit] / rx, _UM_PER_UNIT[unit] / ry
    return None, None


def info_from_openslide(
    path: str | Path,
    osr: Any,
    mpp_override: float | None = None,
    *,
    mpp_range: tuple[float, float] = MPP_RANGE,
    max_dimension_px: int = MAX_DIMENSION_PX,
) -> SlideInfo:
    """Build and check a SlideInfo from an open OpenSlide object (see module doc for MPP rules)."""
    props = osr.properties
    return checked_info(
        path, str(props.get("openslide.vendor", "unknown")), tuple((int(w), int(h)) for w, h in osr.level_dimensions),
        mpp_from_properties(props), float_or_none(props.get("openslide.objective-power")), mpp_override,
        mpp_range=mpp_range, max_dimension_px=max_dimension_px,
    )


def checked_info(
    path: str | Path,
    vendor: str,
    level_dims: tuple[tuple[int, int], ...],
    header_mpp: tuple[float | None, float | None],
    objective: float | None,
    mpp_override: float | None = None,
    *,
    mpp_range: tuple[float, float] = MPP_RANGE,
    max_dimension_px: int = MAX_DIMENSION_PX,
) -> SlideInfo:
    """A SlideInfo from any reader's geometry and header MPP, with the override, size and MPP-range rules."""
    w0, h0 = level_dims[0]
    if max(w0, h0) > max_dimension_px:
        raise SlideError(path, QuarantineReason.too_large, f"{w0}x{h0} px exceeds {max_dimension_px} px")
    if min(w0, h0) < 1:
        raise SlideError(path, QuarantineReason.unreadable, f"level 0 is {w0}x{h0} px")
    if mpp_override is not None:
        mx = my = float(mpp_override)
        source = "override"
    else:
        mx, my = header_mpp
        source = "header" if mx is not None and my is not None else "missing"
    if source != "missing":
        lo, hi = mpp_range
        if not (lo <= mx <= hi and lo <= my <= hi):
            raise SlideError(path, QuarantineReason.bad_mpp, f"mpp {mx:g}x{my:g} ({source}) outside [{lo:g}, {hi:g}] um/px")
    else:
        mx = my = None
    return SlideInfo(
        path=str(path),
        vendor=vendor,
        width=w0,
        height=h0,
        level_dims=level_dims,
        level_downsamples=level_downsamples_from_dims(level_dims),
        mpp_x=mx,
        mpp_y=my,
        mpp_source=source,
        objective=objective,
    )


def check_file(path: str | Path) -> None:
    """Raise SlideError when `path` is not a regular file, is empty, or is a TIFF cut short."""
    path = str(path)
    if not os.path.isfile(path):
        raise SlideError(path, QuarantineReason.not_a_slide, "not a regular file")
    if os.path.getsize(path) == 0:
        raise SlideError(path, QuarantineReason.empty, "zero bytes")
    truncated = tiff_truncation(path)
    if truncated:
        raise SlideError(path, QuarantineReason.truncated, truncated)


def open_openslide(path: str | Path) -> Any:
    """Open with OpenSlide (after `check_file`), mapping every failure to a SlideError with its quarantine reason."""
    import openslide

    path = str(path)
    if openslide.OpenSlide.detect_format(path) is None:
        raise SlideError(path, QuarantineReason.not_a_slide, "no slide reader recognises the format")
    try:
        return openslide.OpenSlide(path)
    except openslide.OpenSlideUnsupportedFormatError as exc:
        raise SlideError(path, QuarantineReason.not_a_slide, str(exc)) from exc
    except openslide.OpenSlideError as exc:
        raise SlideError(path, QuarantineReason.unreadable, str(exc)) from exc


def tiff_truncation(path: str) -> str:
    """Non-empty description when a TIFF's own structure points past the end of the file.

    Walks the IFD chain from the header (classic and BigTIFF), then checks the tile/strip byte
    ranges tifffile reports. Non-TIFF files give "" (OpenSlide decides about them).
    """
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(16)
        if head[:4] in (b"II*\0", b"MM\0*"):
            bo, big = ("<" if head[:2] == b"II" else ">"), False
        elif head[:4] in (b"II+\0", b"MM\0+"):
            bo, big = ("<" if head[:2] == b"II" else ">"), True
        else:
            return ""
        count_fmt, entry_bytes, off_fmt = ("Q", 20, "Q") if big else ("H", 12, "I")
        offset = struct.unpack(bo + off_fmt, head[8:16] if big else head[4:8])[0]
        seen: set[int] = set()
        while offset and offset not in seen:
            seen.add(offset)
            fh.seek(offset)
            raw = fh.read(struct.calcsize(count_fmt))
            if offset >= size or len(raw) < struct.calcsize(count_fmt):
                return f"image directory at byte {offset} but the file has {size}"
            n = struct.unpack(bo + count_fmt, raw)[0]
            entries = fh.read(n * entry_bytes)
            raw = fh.read(struct.calcsize(off_fmt))
            if len(raw) < struct.calcsize(off_fmt):
                return f"image directory at byte {offset} runs past the end of the file ({size} bytes)"
            for i in range(n):
                _, typ, count, value = struct.unpack(bo + ("HHQQ" if big else "HHII"), entries[i * entry_bytes : (i + 1) * entry_bytes])
                nbytes = count * _TIFF_TYPE_BYTES.get(typ, 1)
                if nbytes > (8 if big else 4) and value + nbytes > size:
                    return f"tag values at byte {value} run past the end of the file ({size} bytes)"
            offset = struct.unpack(bo + off_fmt, raw)[0]
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            end = max((o + n for p in tif.pages for o, n in zip(p.dataoffsets, p.databytecounts) if n), default=0)
    except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError):
        return ""
    return f"image data ends at byte {end} but the file has {size}" if end > size else ""


def slide_info(
    path: str | Path,
    mpp_override: float | None = None,
    *,
    mpp_range: tuple[float, float] = MPP_RANGE,
    max_dimension_px: int = MAX_DIMENSION_PX,
    require_mpp: bool = True,
) -> SlideInfo:
    """Open the slide (with whichever reader serves it), read its metadata, close it. Raises SlideError.

    With `require_mpp=False` a slide without MPP is returned with `mpp_source="missing"` (the
    catalog records it); by default it raises SlideError(no_mpp).
    """
    from pluto.slides.handles import open_slide

    with open_slide(path, mpp_override, mpp_range=mpp_range, max_dimension_px=max_dimension_px) as handle:
        info = handle.info
    if require_mpp and info.mpp_source == "missing":
        raise SlideError(path, QuarantineReason.no_mpp, "no MPP in header or TIFF resolution tags and no override")
    return info
