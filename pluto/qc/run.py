"""Cohort QC: for every `ok` slide of a catalog, masks + per-cell scores + a summary row.

Per slide (outputs in `out_dir/<slide_id>/`, published together only after the per-cell gate passed):
1. thumbnail from the pyramid at `thumb_mpp` (never the label/macro/associated images) -> thumb.png;
2. tissue mask (Otsu on saturation + morphology) and artifact masks from the detector -> masks.npz
   (bool tissue, pen, fold, bubble + float `downsample`, level-0 px per mask px);
3. a grid of square cells of `cell_um` um covering the slide (edge cells clipped): mask fractions
   from the masks; cells with enough tissue are read at the working mpp and get the pixel filters
   (variance of Laplacian; the Midnight HSV filter when the slide's stain is H&E) -> qc.parquet.
A slide with no tissue or no usable cell is flagged with the reason in `qc_summary.parquet`; a
slide that cannot be read is flagged too. Neither is an error: the cohort goes on.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from pluto.errors import PlutoError, SlideError
from pluto.qc.atomic import write_npz, write_parquet, write_png
from pluto.qc.detectors import apply_detector, load_detector
from pluto.qc.expectations import MPP_RANGE, validate_catalog, validate_qc
from pluto.qc.filters import blur_variance, hsv_fraction
from pluto.qc.params import QCParams
from pluto.qc.slide_qc import MASK_NAMES, box_fractions, slide_dir, summed_area
from pluto.qc.tissue import tissue_mask

log = logging.getLogger(__name__)

SUMMARY_FILE = "qc_summary.parquet"
STAGING_PREFIX = ".staging-"  # run_qc writes `.<out_dir name>.staging-*` beside out_dir first, published after the gate
REASONS = ("no_tissue", "pen", "fold", "bubble", "blur", "hsv")  # precedence order
_BATCH = 64


def cell_grid(width: int, height: int, cell_w_l0: int, cell_h_l0: int | None = None) -> np.ndarray:
    """(N, 4) int64 level-0 boxes [x, y, w, h] of cells covering the slide, row-major. Cells are
    square in um: `cell_h_l0` differs from `cell_w_l0` only on a slide whose pixels are not square."""
    cell_h_l0 = cell_w_l0 if cell_h_l0 is None else cell_h_l0
    ys, xs = np.meshgrid(np.arange(0, height, cell_h_l0), np.arange(0, width, cell_w_l0), indexing="ij")
    x, y = xs.ravel(), ys.ravel()
    return np.stack([x, y, np.minimum(cell_w_l0, width - x), np.minimum(cell_h_l0, height - y)], axis=1).astype(np.int64)


def _pixel_scores(tiles: list[np.ndarray], hsv_on: bool, params: QCParams) -> tuple[np.ndarray, np.ndarray]:
    """Blur variance and HSV fraction per tile; same-shape tiles go through the filters in batches."""
    blur = np.full(len(tiles), np.nan)
    hsv = np.full(len(tiles), np.nan)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, t in enumerate(tiles):
        by_shape.setdefault(t.shape, []).append(i)
    for idx in by_shape.values():
        for start in range(0, len(idx), _BATCH):
            chunk = idx[start : start + _BATCH]
            batch = np.stack([tiles[i] for i in chunk])
            blur[chunk] = blur_variance(batch)
            if hsv_on:
                hsv[chunk] = hsv_fraction(batch, params.hsv)
    return blur, hsv


def decide(cells: pd.DataFrame, params: QCParams, hsv_on: bool) -> tuple[np.ndarray, np.ndarray]:
    """keep flag and first failing reason per cell, in the precedence order of REASONS."""
    fails = {
        "no_tissue": cells["tissue_frac"].to_numpy() < params.min_tissue_frac,
        "pen": cells["pen_frac"].to_numpy() > params.max_pen_frac,
        "fold": cells["fold_frac"].to_numpy() > params.max_fold_frac,
        "bubble": cells["bubble_frac"].to_numpy() > params.max_bubble_frac,
        "blur": ~(cells["blur_var"].to_numpy() >= params.min_blur_var),
        "hsv": (cells["hsv_frac"].to_numpy() < params.hsv_min_frac) if hsv_on else np.zeros(len(cells), bool),
    }
    reason = np.full(len(cells), "", dtype=object)
    for name in reversed(REASONS):
        reason[fails[name]] = name
    return reason == "", reason


def _summary(slide_id: str, stain: str, hsv_on: bool, **fields: Any) -> dict[str, Any]:
    row = {
        "slide_id": slide_id,
        "status": "ok",
        "reason": "",
        "detail": "",
        "stain": stain,
        "hsv_applied": hsv_on,
        "tissue_frac": 0.0,
        "pen_frac": 0.0,
        "fold_frac": 0.0,
        "bubble_frac": 0.0,
        "n_cells": 0,
        "n_tissue_cells": 0,
        "n_keep": 0,
        **{f"n_{r}": 0 for r in REASONS},
        "thumb_mpp": math.nan,
        "downsample": math.nan,
        "cell_l0": 0,
        "cell_mpp": math.nan,
    }
    row.update(fields)
    return row


def qc_slide(
    slide_id: str,
    path: str,
    stain: str,
    out_dir: Path,
    params: QCParams,
    detector: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]],
    mpp_override: float | None = None,
) -> dict[str, Any]:
    """QC one slide; writes its three files and returns its summary row."""
    from pluto.slides import get_handle, read_thumbnail, read_tile

    hsv_on = params.applies_hsv(stain)
    handle = get_handle(path, mpp_override)
    info = handle.info
    mpp_x, mpp_y = info.mpp_xy
    thumb_mpp = max(params.thumb_mpp, info.mpp)
    thumb, downsample = read_thumbnail(handle, thumb_mpp)
    tissue = tissue_mask(
        thumb,
        (mpp_x * downsample, mpp_y * downsample),
        min_saturation=params.tissue_min_saturation,
        max_hole_um2=params.tissue_max_hole_um2,
        min_component_um2=params.tissue_min_component_um2,
    )
    masks = {"tissue": tissue, **apply_detector(detector, thumb, tissue)}
    d = slide_dir(out_dir, slide_id)
    write_png(d / "thumb.png", thumb)
    write_npz(d / "masks.npz", **masks, downsample=np.float64(downsample))

    cell_mpp = max(params.cell_mpp, info.mpp)
    cell_l0 = max(1, int(round(params.cell_um / mpp_x)))
    cell_h_l0 = max(1, int(round(params.cell_um / mpp_y)))
    boxes = cell_grid(info.width, info.height, cell_l0, cell_h_l0)
    cells = pd.DataFrame(
        {
            "slide_id": slide_id,
            "x_l0": boxes[:, 0],
            "y_l0": boxes[:, 1],
            "w_l0": boxes[:, 2],
            "h_l0": boxes[:, 3],
            "cell_mpp": cell_mpp,
        }
    )
    for name in MASK_NAMES:
        cells[f"{name}_frac"] = box_fractions(summed_area(masks[name]), boxes, downsample)
    cells["hsv_frac"] = np.nan
    cells["blur_var"] = np.nan
    candidates = np.flatnonzero(cells["tissue_frac"].to_numpy() >= params.min_tissue_frac)
    if candidates.size:
        read_px = max(1, int(round(cell_l0 * mpp_x / cell_mpp)))
        tiles = []
        for i in candidates:
            x, y, w, h = boxes[i]
            tile = read_tile(handle, int(x), int(y), cell_mpp, read_px)
            keep_w = max(1, int(round(w * mpp_x / cell_mpp)))
            keep_h = max(1, int(round(h * mpp_y / cell_mpp)))
            tiles.append(tile[:keep_h, :keep_w])
        blur, hsv = _pixel_scores(tiles, hsv_on, params)
        cells.loc[candidates, "blur_var"] = blur
        cells.loc[candidates, "hsv_frac"] = hsv
    keep, reason = decide(cells, params, hsv_on)
    cells["keep"] = keep
    cells["reason"] = reason.astype(str)
    write_parquet(cells, d / "qc.parquet")

    tissue_px = max(int(tissue.sum()), 1)
    counts = pd.Series(reason).value_counts()
    row = _summary(
        slide_id,
        stain,
        hsv_on,
        tissue_frac=float(tissue.mean()),
        **{f"{n}_frac": float((masks[n] & tissue).sum() / tissue_px) for n in ("pen", "fold", "bubble")},
        n_cells=len(cells),
        n_tissue_cells=int(candidates.size),
        n_keep=int(keep.sum()),
        **{f"n_{r}": int(counts.get(r, 0)) for r in REASONS},
        thumb_mpp=float(info.mpp * downsample),
        downsample=float(downsample),
        cell_l0=cell_l0,
        cell_mpp=float(cell_mpp),
    )
    if not tissue.any():
        row.update(status="flagged: no_tissue", reason="no_tissue", detail="tissue mask is empty")
    elif not keep.any():
        row.update(
            status="flagged: no_usable_cells",
            reason="no_usable_cells",
            detail=f"0 of {len(cells)} cells pass QC ({', '.join(f'{k}: {v}' for k, v in counts.items())})",
        )
    return row


def _qc_one(args: tuple) -> dict[str, Any]:
    slide_id, path, stain, mpp_override, out_dir, params, detector = args
    fn = detector if callable(detector) else load_detector(detector)
    try:
        return qc_slide(slide_id, path, stain, out_dir, params, fn, mpp_override)
    except SlideError as exc:
        log.warning("qc: %s flagged: %s", slide_id, exc)
        hsv_on = params.applies_hsv(stain)
        return _summary(slide_id, stain, hsv_on, status=f"flagged: {exc.reason.value}", reason=exc.reason.value, detail=str(exc))


def run_qc(
    catalog_path: Path,
    out_dir: Path,
    *,
    params: QCParams = QCParams(),
    detectors: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]] | str | None = None,
    mpp_range: tuple[float, float] = MPP_RANGE,
    on_progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """QC every `ok` slide of `catalog_path`; writes `out_dir/<slide_id>/...` and `out_dir/qc_summary.parquet`.

    Every slide's files are written into a staging folder beside `out_dir`, the per-cell gate
    (`validate_qc`) runs on them there, and only then are they moved into place: a failed gate, or
    any other error, leaves the previously published QC as it was and nothing of this run visible.
    `detectors` overrides `params.detector` (a callable, or a "module:callable" path). Slides run in
    `params.workers` processes. Returns the summary (one row per QC'd slide).
    """
    catalog_path, out_dir = Path(catalog_path), Path(out_dir)
    if not catalog_path.is_file():
        raise PlutoError(f"{catalog_path}: catalog not found; run `pluto ingest` first")
    catalog = pd.read_parquet(catalog_path)
    validate_catalog(catalog, mpp_range)
    detector = detectors if detectors is not None else params.detector
    if not callable(detector):
        load_detector(detector)  # fail fast on a bad dotted path
    ok = catalog[catalog["status"] == "ok"]
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}{STAGING_PREFIX}"))  # same filesystem
    try:
        jobs = [
            (
                r.slide_id,
                r.path,
                r.stain if isinstance(r.stain, str) else "",
                float(r.mpp_x) if r.mpp_source == "override" else None,
                stage,
                params,
                detector,
            )
            for r in ok.itertuples(index=False)
        ]
        log.info("qc: %d ok slides of %d in %s", len(jobs), len(catalog), catalog_path)
        rows: list[dict[str, Any]] = []
        if params.workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=min(params.workers, len(jobs))) as pool:
                for row in pool.map(_qc_one, jobs):
                    rows.append(row)
                    if on_progress is not None:
                        on_progress(len(rows), len(jobs))
        else:
            for job in jobs:
                rows.append(_qc_one(job))
                if on_progress is not None:
                    on_progress(len(rows), len(jobs))
        summary = pd.DataFrame(rows, columns=list(_summary("", "", False)))
        tables = [pd.read_parquet(slide_dir(stage, r["slide_id"]) / "qc.parquet") for r in rows if r["n_cells"] > 0]
        if tables:
            validate_qc(pd.concat(tables, ignore_index=True))
        write_parquet(summary, stage / SUMMARY_FILE)
        _publish(stage, out_dir, [r["slide_id"] for r in rows])
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    flagged = int((summary["status"] != "ok").sum())
    log.info("qc: %d slides, %d flagged, %d cells kept -> %s", len(summary), flagged, int(summary["n_keep"].sum()), out_dir)
    return summary


def _publish(stage: Path, out_dir: Path, slide_ids: list[str]) -> None:
    """Move the staged per-slide folders, then the summary, into `out_dir` (after the gate passed).

    Each folder replaces its predecessor with two renames on one filesystem (the old one moves into
    the stage, which the caller removes); the summary is replaced last, in one rename.
    """
    for slide_id in slide_ids:
        new, old = slide_dir(stage, slide_id), slide_dir(out_dir, slide_id)
        if not new.is_dir():  # a slide that could not be read writes no folder
            continue
        if old.exists():
            old.rename(stage / f".old-{slide_id}")
        new.rename(old)
    os.replace(stage / SUMMARY_FILE, out_dir / SUMMARY_FILE)
