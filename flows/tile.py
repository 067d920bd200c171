"""`tile` flow: fan-out of `pluto.tiling.tile_cohort` over slide batches on Dask, merged into work/tiles/."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, task

from flows.common import cached_or_refresh, dask_runner, resolve, stage_cache_key, stage_run, was_cached
from pluto.data_version import table_hash, tables_hash
from pluto.fanout import TILE_SPEC, merge_tiles, prune_store, split_catalog


@task(cache_key_fn=stage_cache_key, persist_result=True, result_serializer="json")
def tile_batch(batch_catalog: str, qc_dir: str, out_dir: str, options: dict[str, Any], input_hash: str, config_hash: str) -> dict[str, int]:
    from pluto.tiling import tile_cohort

    summary = tile_cohort(Path(batch_catalog), Path(qc_dir), Path(out_dir), **options)
    return {"slides": int(summary["slide_id"].nunique()), "tiles": int(summary["n_tiles"].sum())}


def _batch_input_hash(batch: Path, qc_dir: Path) -> str:
    """The batch's catalog rows and the QC tables of its slides."""
    ids = pd.read_parquet(batch, columns=["slide_id"])["slide_id"]
    qc_tables = [qc_dir / sid / "qc.parquet" for sid in ids if (qc_dir / sid / "qc.parquet").is_file()]
    return hashlib.sha256(f"{table_hash(batch)}{tables_hash(qc_tables)}".encode()).hexdigest()[:16]


@flow(name="tile")
def tile_flow(config: dict[str, Any] | None = None, parent_run_id: str | None = None) -> dict[str, Any]:
    s = resolve(config)
    t = s.tiling
    fanout = s.paths.work_dir / ".fanout"
    batches = split_catalog(s.paths.catalog, s.chain.fanout_batch_slides, fanout / "tile-batches")
    config_hash = s.config_hash("tiling", "slides", "seed")
    options = {
        "mpps": t.mpps, "tile_pxs": t.tile_pxs, "mode": t.mode, "regions_per_slide": t.regions_per_slide,
        "min_tissue": t.min_tissue, "max_pen": t.max_pen, "max_fold": t.max_fold, "max_bubble": t.max_bubble,
        "shard_rows": t.shard_rows, "seed": s.seed, "rel_tol": s.slides.mpp_rel_tol,
    }
    outs, futures = [], []
    with dask_runner(s) as runner:
        for batch in batches:
            input_hash = _batch_input_hash(batch, s.paths.qc_dir)
            out = fanout / "tiles" / f"{input_hash}-{config_hash}"
            run = cached_or_refresh(tile_batch, [out / TILE_SPEC])
            outs.append(out)
            futures.append(runner.submit(run, parameters={
                "batch_catalog": str(batch), "qc_dir": str(s.paths.qc_dir), "out_dir": str(out), "options": options,
                "input_hash": input_hash, "config_hash": config_hash,
            }))
        results = [f.result() for f in futures]
        cached = all(was_cached(f.state) for f in futures)
    merge_tiles(outs, s.paths.tiles_dir)
    prune_store(fanout / "tiles", outs)
    manifest_hash = tables_hash(sorted(s.paths.tiles_dir.glob("*.parquet")))
    counts = {k: sum(r[k] for r in results) for k in ("slides", "tiles")}
    with stage_run(s, "tile", parent_run_id) as tracker:
        tracker.log_params({"batches": len(batches), "cached": cached, "manifest_hash": manifest_hash, **options})
        tracker.log_metrics({k: float(v) for k, v in counts.items()})
    return {**counts, "batches": len(batches), "cached": cached, "manifest_hash": manifest_hash}
