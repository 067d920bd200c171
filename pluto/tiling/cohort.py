"""Tile a cohort: catalog + QC -> sharded coordinate manifest, in grid or sampling mode.

Grid mode keeps every tile of each (mpp, tile_px) grid that passes QC. Sampling mode follows
PLUTO-4 ("165M regions of usable tissue ... around 640M image tiles across 4 magnifications
(0.25, 0.5, 1.0, 2.0 um/px) ... a mix of tile sizes 275px, 550px"): a budget of region centres
per slide spread over usable tissue, each region drawing one tile size and getting one tile per
target mpp centred on it, so tiles/region ~= number of mpps (640M / 165M ~= 3.9) and a cohort's
manifest size is ~ n_slides * regions_per_slide * len(mpps), whatever the slide sizes.
A resolution is never upsampled: specs finer than a slide's native mpp are skipped and recorded.

tiling_summary.parquet `reason` per slide x spec: "" (tiles written), "upsample", "larger_than_slide",
"no_tiles" (no tile passed QC), "no_qc" (no QC output for the slide) or a QuarantineReason when
the slide cannot be opened; `slide_status` is "flagged: <reason>" when the slide got no tile at all.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from pluto.errors import PlutoError, QuarantineReason, SlideError
from pluto.slides import SlideInfo, TileSpec, slide_info
from pluto.slides.geometry import MPP_REL_TOL
from pluto.tiling.geometry import SpecPlan, boxes, centred_origins, grid_origins, plan_spec
from pluto.tiling.manifest import (
    LOCATION_COLUMNS,
    SCORE_COLUMNS,
    SPEC_FILE,
    SUMMARY_FILE,
    ShardWriter,
    publish,
    staging_dir,
    table_hash,
    write_json,
)
from pluto.tiling.pixels import PixelFilter, score_tiles
from pluto.tiling.sampling import sample_regions

if TYPE_CHECKING:
    from pluto.qc import QCParams, SlideQC

log = logging.getLogger(__name__)

Mode = Literal["grid", "sample"]
QC_COLUMNS = ("tissue_frac", "pen_frac", "fold_frac", "bubble_frac")
CELL_FILTER_REJECTS = ("pen", "fold", "bubble", "blur", "hsv")  # QC cell reasons that veto a tile
CELL_MASK_REJECTS = ("pen", "fold", "bubble")  # those left when the tile's own pixels decide blur and HSV
SUMMARY_COLUMNS = (
    "slide_id", "path", "mpp", "tile_px", "native_mpp", "level", "read_px",
    "n_candidates", "n_pixel_rejected", "n_tiles", "reason", "detail", "slide_status",
)


@dataclass(frozen=True)
class TileFilter:
    """QC thresholds a tile must pass. min_tissue 0.4 is Midnight's foreground rule ("foreground
    area threshold set to 40%"); artifact maxima are fractions of the tile's area, the same
    defaults as the QC cell filter (pluto.qc.QCParams)."""

    min_tissue: float = 0.4
    max_pen: float = 0.1
    max_fold: float = 0.25
    max_bubble: float = 0.25

    def passes(self, scores: pd.DataFrame, cell_rejects: tuple[str, ...] = CELL_FILTER_REJECTS) -> np.ndarray:
        """Bool per scored box (columns of SlideQC.score_boxes): fractions in range, and the QC
        cell at the tile's centre not rejected for one of `cell_rejects`. A centre cell dropped only
        for too little tissue does not veto the tile: the tile's own tissue_frac (exact, over its
        whole area) decides that, which matters for 2.0 um/px tiles spanning dozens of cells. With
        pixel filters on (`pluto.tiling.pixels`), the tile's own pixels decide blur and HSV."""
        return (
            (scores["tissue_frac"].to_numpy() >= self.min_tissue)
            & (scores["pen_frac"].to_numpy() <= self.max_pen)
            & (scores["fold_frac"].to_numpy() <= self.max_fold)
            & (scores["bubble_frac"].to_numpy() <= self.max_bubble)
            & (scores["cell_keep"].to_numpy(dtype=bool) | ~scores["cell_reason"].isin(cell_rejects).to_numpy())
        )

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def slide_seed(seed: int, slide_id: str) -> int:
    """Per-slide RNG seed: independent of catalog order, so adding slides keeps old samples."""
    return int.from_bytes(hashlib.sha256(f"pluto-regions:{seed}:{slide_id}".encode()).digest()[:8], "little")


REGION_LOCAL_BITS = 20  # regions per slide < 2**20; the other 43 bits of the int64 id come from the slide id


def region_base(slide_id: str) -> int:
    """First region id of a slide: 43 bits of the sha256 of its id, shifted past REGION_LOCAL_BITS.
    Ids depend on nothing but the slide, so adding slides, or tiling one slide alone in a fan-out
    task, keeps every id; two slides share ids only if those 43 bits agree (odds ~ n^2 / 2^44 for
    n slides, which `pluto.fanout.merge_tiles` reports)."""
    digest = int.from_bytes(hashlib.sha256(f"pluto-regions:{slide_id}".encode()).digest()[:8], "big")
    return (digest >> (64 - 63 + REGION_LOCAL_BITS)) << REGION_LOCAL_BITS


def usable_mask(qc: SlideQC) -> np.ndarray:
    """Where region centres may fall (PLUTO-4's "usable tissue"): tissue without pen, fold or
    bubble, inside QC cells that passed every filter. Same grid as the QC masks."""
    m = qc.masks
    usable = m["tissue"] & ~m["pen"] & ~m["fold"] & ~m["bubble"]
    kept = np.zeros_like(usable)
    cells = qc.cells[qc.cells["keep"].to_numpy(dtype=bool)]
    ds = qc.downsample
    x0 = np.floor(cells["x_l0"].to_numpy() / ds).astype(int)
    y0 = np.floor(cells["y_l0"].to_numpy() / ds).astype(int)
    x1 = np.ceil((cells["x_l0"] + cells["w_l0"]).to_numpy() / ds).astype(int)
    y1 = np.ceil((cells["y_l0"] + cells["h_l0"]).to_numpy() / ds).astype(int)
    for a, b, c, d in zip(x0, y0, x1, y1):
        kept[b:d, a:c] = True
    return usable & kept


def _rows(slide_id: str, path: str, plan: SpecPlan, origins: np.ndarray, scores: pd.DataFrame,
          region_ids: np.ndarray, mpp_override: float) -> pd.DataFrame:
    """Manifest rows; `scores` holds the QC mask fractions and, when pixel filters ran, `SCORE_COLUMNS`."""
    n = len(origins)
    return pd.DataFrame({
        "slide_id": [slide_id] * n,
        "path": [path] * n,
        "level": np.full(n, plan.level),
        "x_l0": origins[:, 0],
        "y_l0": origins[:, 1],
        "mpp": np.full(n, plan.mpp),
        "tile_px": np.full(n, plan.tile_px),
        "read_px": np.full(n, plan.read_px),
        "region_id": region_ids,
        **{c: scores[c].to_numpy() for c in QC_COLUMNS},
        **{c: scores[c].to_numpy() if c in scores else np.full(n, np.nan) for c in SCORE_COLUMNS},
        "mpp_override": np.full(n, mpp_override),
    })


@dataclass
class SlideTiles:
    """One slide's result: manifest rows (region_id local to the slide, from 0) and summary rows."""

    rows: pd.DataFrame
    summary: list[dict]


def tile_slide(
    slide_id: str,
    info: SlideInfo,
    qc: SlideQC,
    specs: Sequence[TileSpec],
    *,
    mode: Mode,
    regions_per_slide: int,
    tile_filter: TileFilter,
    seed: int,
    rel_tol: float = MPP_REL_TOL,
    mpp_override: float | None = None,
    pixels: tuple[Any, PixelFilter, bool] | None = None,
) -> SlideTiles:
    """Tiles of one slide for every spec (see module doc); `qc` is the slide's `pluto.qc.SlideQC`.

    `pixels`: (slide handle, PixelFilter, whether the HSV verdict applies) to score each tile that
    passes the QC masks on its own pixels (`pluto.tiling.pixels`); None keeps the QC cells' verdict."""
    override = np.nan if mpp_override is None else float(mpp_override)
    plans: dict[TileSpec, SpecPlan] = {}
    summary: list[dict] = []
    base = {"slide_id": slide_id, "path": info.path, "native_mpp": info.mpp}
    for spec in specs:
        plan = plan_spec(info, spec, rel_tol)
        if isinstance(plan, SpecPlan):
            plans[spec] = plan
        else:
            summary.append({**base, "mpp": spec.mpp, "tile_px": spec.tile_px, "level": -1, "read_px": 0,
                            "n_candidates": 0, "n_pixel_rejected": 0, "n_tiles": 0, "reason": plan[0],
                            "detail": plan[1].removeprefix(f"{info.path}: ")})  # the row's `path` names the slide

    def select(plan: SpecPlan, origins: np.ndarray) -> tuple[np.ndarray, pd.DataFrame, int]:
        """(kept row indices into `origins`, their scores, tiles the pixel filters rejected)."""
        scores = qc.score_boxes(boxes(origins, plan))
        kept = np.flatnonzero(tile_filter.passes(scores, CELL_FILTER_REJECTS if pixels is None else CELL_MASK_REJECTS))
        scores = scores.iloc[kept].reset_index(drop=True)
        if pixels is None:
            return kept, scores, 0
        handle, pixel_filter, hsv_on = pixels
        scores = pd.concat([scores, score_tiles(handle, origins[kept], plan.mpp, plan.tile_px, pixel_filter, rel_tol)], axis=1)
        ok = pixel_filter.passes(scores, hsv_on)
        return kept[ok], scores[ok].reset_index(drop=True), int((~ok).sum())

    parts: list[pd.DataFrame] = []
    counts: dict[TileSpec, tuple[int, int, int]] = {}
    if mode == "grid":
        next_region = 0
        for spec, plan in plans.items():
            origins = grid_origins(info, plan)
            kept, scores, rejected = select(plan, origins)
            n = len(kept)
            parts.append(_rows(slide_id, info.path, plan, origins[kept], scores,
                               np.arange(next_region, next_region + n), override))
            next_region += n
            counts[spec] = (len(origins), rejected, n)
    elif mode == "sample":
        rng = np.random.default_rng(slide_seed(seed, slide_id))
        regions = sample_regions(usable_mask(qc), qc.downsample, regions_per_slide, int(rng.integers(2**63)))
        sizes = sorted({s.tile_px for s in plans})
        region_px = rng.choice(sizes, size=len(regions.centres_l0)) if sizes else np.zeros(0, dtype=int)
        for spec, plan in plans.items():
            mine = np.flatnonzero(region_px == spec.tile_px)
            origins, inside = centred_origins(info, plan, regions.centres_l0[mine])
            mine, origins = mine[inside], origins[inside]
            kept, scores, rejected = select(plan, origins)
            parts.append(_rows(slide_id, info.path, plan, origins[kept], scores, mine[kept], override))
            counts[spec] = (int(inside.size), rejected, len(kept))
    else:
        raise PlutoError(f"tiling mode must be 'grid' or 'sample', got {mode!r}")
    rows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    for spec, plan in plans.items():
        n_cand, n_rejected, n_tiles = counts[spec]
        summary.append({**base, "mpp": spec.mpp, "tile_px": spec.tile_px, "level": plan.level, "read_px": plan.read_px,
                        "n_candidates": n_cand, "n_pixel_rejected": n_rejected, "n_tiles": n_tiles,
                        "reason": "" if n_tiles else QuarantineReason.no_tiles.value, "detail": ""})
    status = "ok" if len(rows) else f"flagged: {QuarantineReason.no_tiles.value}"
    for s in summary:
        s["slide_status"] = status
    return SlideTiles(rows, summary)


def _qc_digest(qc: SlideQC) -> str:
    h = hashlib.sha256(f"{qc.slide_id}:{qc.downsample!r}".encode())
    for name in sorted(qc.masks):
        h.update(name.encode())
        h.update(np.packbits(qc.masks[name]).tobytes())
        h.update(repr(qc.masks[name].shape).encode())
    h.update(table_hash(qc.cells).encode())
    return h.hexdigest()


def _skipped(slide_id: str, path: str, specs: Sequence[TileSpec], reason: str, detail: str) -> list[dict]:
    return [
        {"slide_id": slide_id, "path": path, "mpp": s.mpp, "tile_px": s.tile_px, "native_mpp": np.nan,
         "level": -1, "read_px": 0, "n_candidates": 0, "n_pixel_rejected": 0, "n_tiles": 0,
         "reason": reason, "detail": detail, "slide_status": f"flagged: {reason}"}
        for s in specs
    ]


def _override(rec: dict) -> float | None:
    return float(rec["mpp_x"]) if rec.get("mpp_source") == "override" else None


def tile_cohort(
    catalog_path: Path | str,
    qc_dir: Path | str,
    out_dir: Path | str,
    *,
    mpps: Sequence[float] = (0.25, 0.5, 1.0, 2.0),
    tile_pxs: Sequence[int] = (275, 550),
    mode: Mode = "grid",
    regions_per_slide: int = 300,
    min_tissue: float = 0.4,
    max_pen: float = 0.1,
    max_fold: float = 0.25,
    max_bubble: float = 0.25,
    shard_rows: int = 1_000_000,
    seed: int = 0,
    rel_tol: float = MPP_REL_TOL,
    pixel_filters: bool = True,
    qc_params: QCParams | Mapping[str, Any] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Tile every `ok` slide of the catalog; write `out_dir` (manifest shards, spec.json,
    tiling_summary.parquet) atomically and return the summary (one row per slide x spec).

    Per-slide problems (unreadable slide, missing QC, no tiles) are recorded in the summary and
    the run goes on; a failed manifest gate (`pluto.qc.validate_manifest`) or any other error
    aborts and leaves the previous `out_dir` untouched. Default regions_per_slide 300 is
    PLUTO-4's 165M regions / 551,164 WSIs. `pixel_filters`: score each tile on its own pixels
    (`pluto.tiling.pixels`) with `qc_params`' HSV range, blur and saturation thresholds and
    `min_tissue` as the foreground fraction (both are Midnight's 40%).
    """
    from pluto.qc import QCParams, load_qc, validate_manifest
    from pluto.slides import get_handle

    if mode not in ("grid", "sample"):
        raise PlutoError(f"tiling mode must be 'grid' or 'sample', got {mode!r}")
    catalog_path, qc_dir, out_dir = Path(catalog_path), Path(qc_dir), Path(out_dir)
    if not catalog_path.is_file():
        raise PlutoError(f"{catalog_path}: catalog not found; run `pluto ingest` first")
    catalog = pd.read_parquet(catalog_path).sort_values("slide_id", kind="stable").reset_index(drop=True)
    slides = catalog[catalog["status"] == "ok"].to_dict("records")
    specs = [TileSpec(float(m), int(p)) for m in mpps for p in tile_pxs]
    if not specs:
        raise PlutoError(f"{out_dir}: no tile specs (mpps={list(mpps)}, tile_pxs={list(tile_pxs)})")
    tile_filter = TileFilter(min_tissue, max_pen, max_fold, max_bubble)
    params = qc_params if isinstance(qc_params, QCParams) else QCParams.from_dict(qc_params or {})
    pixel_filter = PixelFilter(params.hsv_min_frac, min_tissue, params.min_blur_var, params.tissue_min_saturation,
                               params.hsv) if pixel_filters else None
    tmp = staging_dir(out_dir)
    try:
        writer = ShardWriter(tmp, shard_rows, validate_manifest)
        summary: list[dict] = []
        qc_hash = hashlib.sha256()
        for i, rec in enumerate(slides):
            slide_id, path = str(rec["slide_id"]), str(rec["path"])
            try:
                info = slide_info(path, _override(rec))
                qc = load_qc(qc_dir, slide_id)
            except SlideError as exc:
                summary += _skipped(slide_id, path, specs, exc.reason.value, str(exc))
                continue
            except PlutoError as exc:
                log.warning("%s", exc)
                summary += _skipped(slide_id, path, specs, "no_qc", str(exc))
                continue
            qc_hash.update(_qc_digest(qc).encode())
            pixels = None if pixel_filter is None else (
                get_handle(path, _override(rec)), pixel_filter, params.applies_hsv(rec.get("stain")))
            res = tile_slide(slide_id, info, qc, specs, mode=mode, regions_per_slide=regions_per_slide,
                             tile_filter=tile_filter, seed=seed, rel_tol=rel_tol, mpp_override=_override(rec), pixels=pixels)
            if len(res.rows):
                if int(res.rows["region_id"].max()) >= 2**REGION_LOCAL_BITS:
                    raise PlutoError(f"{path}: more than 2**{REGION_LOCAL_BITS} regions in one slide; "
                                     "lower tiling.regions_per_slide or use sampling mode")
                res.rows["region_id"] += region_base(slide_id)
                writer.add(res.rows)
            summary += res.summary
            if on_progress is not None:
                on_progress(i + 1, len(slides))
        manifest_hash = writer.close()
        table = pd.DataFrame(summary, columns=list(SUMMARY_COLUMNS))
        table.to_parquet(tmp / SUMMARY_FILE, index=False)
        write_json(tmp / SPEC_FILE, {
            "specs": [s.to_dict() for s in specs],
            "mode": mode,
            "settings": {"regions_per_slide": regions_per_slide, "shard_rows": shard_rows, "seed": seed,
                         "mpp_rel_tol": rel_tol, **tile_filter.to_dict(),
                         "pixel_filter": pixel_filter.to_dict() if pixel_filter else None},
            "catalog_sha256": table_hash(catalog, drop=("ingested_at", *LOCATION_COLUMNS)),
            "qc_sha256": qc_hash.hexdigest(),
            "manifest_sha256": manifest_hash,
            "n_rows": writer.n_rows,
            "n_shards": writer.n_shards,
            "n_slides": len(slides),
        })
        publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    flagged = table.loc[table["slide_status"] != "ok", "slide_id"].nunique()
    log.info("tiled %d slides (%s mode): %d tiles in %d shards, %d slides flagged -> %s",
             len(slides), mode, writer.n_rows, writer.n_shards, flagged, out_dir)
    return table
