"""Read geometry: which level serves a target resolution and which level pixels one tile covers.

Three frames (as in wsidata's TileSpec): the request (target mpp, output `tile_px`), the read level
(`level`, `x_lv`, `y_lv`, `read_px` in that level's pixels) and level 0 (`x_l0`, `y_l0`). The read
region is snapped to the read level's pixel grid using the integer level factor from the level
dimensions, then resized once with area interpolation to `tile_px`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from pluto.errors import PlutoError
from pluto.slides.metadata import SlideInfo

MPP_REL_TOL = 0.02  # default and ceiling of SlideSettings.mpp_rel_tol: scanner jitter, not a resampling allowance


@dataclass(frozen=True)
class TileSpec:
    """A tile size at a physical resolution: `tile_px` output px at `mpp` um/px."""

    mpp: float
    tile_px: int

    @property
    def field_um(self) -> float:
        """Edge of the tile in micrometres."""
        return self.mpp * self.tile_px

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TileSpec":
        return cls(mpp=float(d["mpp"]), tile_px=int(d["tile_px"]))


@dataclass(frozen=True)
class TileRequest:
    """One read: level-0 top-left, the level read, the snapped region read at that level, output size.

    `read_w` and `read_h` differ only on a slide whose pixels are not square (mpp_x != mpp_y): the
    tile is square in um, so it covers different numbers of pixels across and down.
    """

    x_l0: int
    y_l0: int
    level: int
    x_lv: int
    y_lv: int
    read_w: int
    read_h: int
    tile_px: int

    @property
    def read_px(self) -> int:
        """Level px read across (equal to `read_h` on square-pixel slides)."""
        return self.read_w

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TileRequest":
        return cls(**{k: int(d[k]) for k in ("x_l0", "y_l0", "level", "x_lv", "y_lv", "read_w", "read_h", "tile_px")})


def check_resolution(info: SlideInfo, mpp: float, rel_tol: float = MPP_REL_TOL) -> None:
    """Raise PlutoError when even level 0 is coarser than `mpp` beyond `rel_tol` on either axis (a
    read would upsample that axis).

    0.499 um/px serves 0.5 (and 0.49, within 2% jitter) but not 0.43: that would stretch 193 px to
    224. A 0.25 x 0.5 um/px slide serves 0.5 but not 0.3: its rows would be stretched.
    """
    native = info.mpp
    if native > mpp * (1.0 + rel_tol):
        raise PlutoError(
            f"{info.path}: {mpp:g} um/px requested but the slide's native resolution is "
            f"{info.mpp_x:g} x {info.mpp_y:g} um/px (tolerance {rel_tol:.0%}); refusing to upsample"
        )


def best_level(info: SlideInfo, mpp: float, rel_tol: float = MPP_REL_TOL) -> int:
    """Coarsest level whose mpp on both axes does not exceed `mpp` (beyond `rel_tol`); raises when none qualifies.

    A level coarser than the target beyond the tolerance is never chosen, however close, so a tile is
    only ever reduced (area-resized down) from the level read, never stretched.
    """
    check_resolution(info, mpp, rel_tol)
    limit = mpp * (1.0 + rel_tol)
    return max((lv for lv in range(info.levels) if info.level_mpp(lv) <= limit), key=lambda lv: info.level_downsamples[lv])


def plan_read(
    info: SlideInfo, x_l0: int, y_l0: int, mpp: float, tile_px: int, rel_tol: float = MPP_REL_TOL
) -> TileRequest:
    """The level read for a `tile_px` tile at `mpp` whose top-left is level-0 (x_l0, y_l0).

    The tile is `tile_px * mpp` um square: `tile_px * mpp / mpp_x` level-0 px across and
    `tile_px * mpp / mpp_y` down; at the chosen level that is that many over its downsample
    (rounded), starting at the nearest level pixel.
    """
    level = best_level(info, mpp, rel_tol)
    ds = info.level_downsamples[level]
    mpp_x, mpp_y = info.mpp_xy
    return TileRequest(
        x_l0=int(x_l0),
        y_l0=int(y_l0),
        level=level,
        x_lv=int(round(x_l0 / ds)),
        y_lv=int(round(y_l0 / ds)),
        read_w=max(1, int(round(tile_px * mpp / mpp_x / ds))),
        read_h=max(1, int(round(tile_px * mpp / mpp_y / ds))),
        tile_px=int(tile_px),
    )
