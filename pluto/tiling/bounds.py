"""Check a tile manifest against the slides it names, before any tile is read.

A manifest is coordinates only, so a hand-edited or stale one can name tiles off the slide (the
reader would return white padding) or a resolution the slide cannot serve without upsampling
(the reader would raise mid-epoch). Every row is placed with the same geometry tiling used
(`plan_spec`, `fits_on_slide`), so a manifest written by `tile_cohort` always passes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pluto.errors import SlideError, ValidationGateError
from pluto.slides import SlideInfo, TileSpec, get_handle
from pluto.slides.geometry import MPP_REL_TOL
from pluto.tiling.geometry import SpecPlan, fits_on_slide, plan_spec

MAX_LISTED_ROWS = 10  # offending rows named in the error; the rest are counted


def _slide_failures(rows: pd.DataFrame, info: SlideInfo, rel_tol: float) -> list[tuple[int, str]]:
    """(row, reason) for each of one slide's rows that is off the slide or at an unservable mpp."""
    out: list[tuple[int, str]] = []
    for (mpp, tile_px), spec_rows in rows.groupby(["mpp", "tile_px"], sort=False):
        plan = plan_spec(info, TileSpec(float(mpp), int(tile_px)), rel_tol)
        if not isinstance(plan, SpecPlan):
            out += [(i, plan[1]) for i in spec_rows.index]
            continue
        x, y = spec_rows["x_l0"].to_numpy(np.int64), spec_rows["y_l0"].to_numpy(np.int64)
        for k in np.flatnonzero(~fits_on_slide(info, plan, x, y)):
            out.append((int(spec_rows.index[k]), f"{info.path}: tile at ({x[k]}, {y[k]}) with a {plan.footprint_w}x{plan.footprint_h}-px "
                        f"footprint ({mpp:g} um/px, {tile_px} px) is outside the slide's {info.width}x{info.height} level-0 px"))
    return out


def manifest_failures(manifest: pd.DataFrame, rel_tol: float = MPP_REL_TOL) -> list[str]:
    """'row <i>: <reason>' for every manifest row (i = global row) that cannot be read as written, in row order."""
    failures: list[tuple[int, str]] = []
    for (path, override), rows in manifest.groupby(["path", "mpp_override"], sort=False, dropna=False):
        try:
            info = get_handle(str(path), None if pd.isna(override) else float(override)).info
        except SlideError as exc:
            failures += [(i, f"slide cannot be opened: {exc}") for i in rows.index]
            continue
        failures += _slide_failures(rows, info, rel_tol)
    return [f"row {i}: {reason}" for i, reason in sorted(failures)]


def check_manifest_bounds(manifest: pd.DataFrame, rel_tol: float = MPP_REL_TOL) -> None:
    """Raise ValidationGateError('manifest', ...) naming the first offending rows (and how many)."""
    failures = manifest_failures(manifest, rel_tol)
    if failures:
        more = len(failures) - MAX_LISTED_ROWS
        listed = failures[:MAX_LISTED_ROWS] + ([f"... and {more} more row(s)"] if more > 0 else [])
        raise ValidationGateError("manifest", listed)
