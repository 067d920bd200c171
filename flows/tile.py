"""`tile` flow: `pluto.tiling.tile_cohort` per slide, in slide batches on Dask, merged into work/tiles/.

As in the qc flow, each slide is a cached task of its own (`tile_slide`), keyed by the catalog fields
tiling reads, the bytes of the slide's QC tables, the tiling config and the code version, so a new
slide tiles only itself; region ids derive from the slide id (`pluto.tiling.cohort.region_base`)
and stay the same whatever else the cohort holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.common import dask_runner, resolve, run_each_cached, stage_cache_key, stage_run
from pluto.code_version import code_version
from pluto.data_version import tables_hash
from pluto.fanout import TILE_SPEC, batched, files_hash, merge_tiles, ok_slides, prune_store, slide_key

TILE_FIELDS = ("slide_id", "path", "mpp_source", "mpp_x", "mpp_y")  # what tile_cohort reads of a slide
QC_FILES = ("qc.parquet", "masks.npz")  # what it reads of the slide's QC


@task(cache_key_fn=stage_cache_key, persist_result=True, result_serializer="json")
def tile_slide(slide: dict[str, Any], qc_dir: str, out_dir: str, options: dict[str, Any], input_hash: str, config_hash: str,
               code_hash: str) -> dict[str, int]:
    from pluto.fanout import one_slide_catalog
    from pluto.tiling import tile_cohort

    with one_slide_catalog(slide, Path(out_dir).parent) as catalog:
        summary = tile_cohort(catalog, Path(qc_dir), Path(out_dir), **options)
    return {"slides": int(summary["slide_id"].nunique()), "tiles": int(summary["n_tiles"].sum())}


@task
def tile_batch(jobs: list[dict[str, Any]], qc_dir: str, options: dict[str, Any]) -> list[dict[str, int]]:
    """Each slide's cached `tile_slide`, recomputed when its folder lacks the spec; adds `recomputed`."""
    return run_each_cached(tile_slide, jobs, TILE_SPEC, qc_dir=qc_dir, options=options)


@flow(name="tile")
def tile_flow(config: dict[str, Any] | None = None, parent_run_id: str | None = None) -> dict[str, Any]:
    s = resolve(config)
    t = s.tiling
    store = s.paths.work_dir / ".fanout" / "tiles"
    config_hash = s.config_hash("tiling", "slides", "qc", "seed")  # qc: the pixel filters' thresholds
    code_hash = code_version("pluto.tiling.cohort")
    options = {
        "mpps": t.mpps, "tile_pxs": t.tile_pxs, "mode": t.mode, "regions_per_slide": t.regions_per_slide,
        "min_tissue": t.min_tissue, "max_pen": t.max_pen, "max_fold": t.max_fold, "max_bubble": t.max_bubble,
        "shard_rows": t.shard_rows, "seed": s.seed, "rel_tol": s.slides.mpp_rel_tol,
        "pixel_filters": t.pixel_filters, "qc_params": s.qc.to_dict(),
    }
    jobs = []
    for rec in ok_slides(s.paths.catalog):
        key = slide_key(rec, TILE_FIELDS, files_hash([s.paths.qc_dir / rec["slide_id"] / f for f in QC_FILES]))
        jobs.append({"slide": rec, "out_dir": str(store / slide_key(rec, (), key, config_hash, code_hash)),
                     "input_hash": key, "config_hash": config_hash, "code_hash": code_hash})
    batches = batched(jobs, s.chain.fanout_batch_slides)
    with dask_runner(s) as runner:
        futures = [runner.submit(tile_batch, parameters={"jobs": b, "qc_dir": str(s.paths.qc_dir), "options": options})
                   for b in batches]
        results = [r for f in futures for r in f.result()]
    outs = [Path(j["out_dir"]) for j in jobs]
    merge_tiles(outs, s.paths.tiles_dir)
    prune_store(store, outs)
    manifest_hash = tables_hash(sorted(s.paths.tiles_dir.glob("*.parquet")))
    counts = {k: sum(r[k] for r in results) for k in ("slides", "tiles", "recomputed")}
    cached = counts["recomputed"] == 0
    with stage_run(s, "tile", parent_run_id) as tracker:
        tracker.log_params({"batches": len(batches), "cached": cached, "manifest_hash": manifest_hash, "code_hash": code_hash, **options})
        tracker.log_metrics({k: float(v) for k, v in counts.items()})
    return {**counts, "batches": len(batches), "cached": cached, "manifest_hash": manifest_hash, "code_hash": code_hash}
