"""`ingest` flow: slides under the ingest prefix -> work/catalog.parquet (cached on the slide listing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.common import cached_or_refresh, io_retries, resolve, stage_cache_key, stage_run, was_cached
from pluto.config import Settings
from pluto.data_version import source_fingerprint, table_hash


def ingest_source(s: Settings) -> str:
    return s.chain.ingest_prefix or str(s.paths.data_root / "wsi")


@task(cache_key_fn=stage_cache_key, persist_result=True, result_serializer="json")
def ingest_slides(src: str, work_dir: str, options: dict[str, Any], input_hash: str, config_hash: str) -> dict[str, int]:
    from pluto.slides import ingest

    catalog = ingest(src, Path(work_dir), **options)
    return {"slides": len(catalog), "ok": int((catalog["status"] == "ok").sum())}


@flow(name="ingest")
def ingest_flow(config: dict[str, Any] | None = None, parent_run_id: str | None = None) -> dict[str, Any]:
    s = resolve(config)
    src = ingest_source(s)
    options = {
        "workers": s.ingest.workers, "metadata_csv": s.ingest.metadata_csv, "mpp_overrides_csv": s.slides.mpp_overrides_csv,
        "default_stain": s.ingest.default_stain, "max_dimension_px": s.slides.max_dimension_px,
        "mpp_range": (s.slides.mpp_min, s.slides.mpp_max), "s3_endpoint_url": s.s3.endpoint_url,
        "s3_region": s.s3.region, "s3_retries": s.s3.retries,
    }
    run = cached_or_refresh(io_retries(ingest_slides, s), [s.paths.catalog])
    state = run(
        src, str(s.paths.work_dir), options,
        input_hash=source_fingerprint(src, s.s3.endpoint_url, s.s3.region), config_hash=s.config_hash("slides", "ingest"),
        return_state=True,
    )
    counts = state.result()
    out = {**counts, "cached": was_cached(state), "catalog_hash": table_hash(s.paths.catalog)}
    with stage_run(s, "ingest", parent_run_id) as tracker:
        tracker.log_params({"src": src, "catalog_hash": out["catalog_hash"], "cached": out["cached"]})
        tracker.log_metrics({"slides": counts["slides"], "slides_ok": counts["ok"]})
    return out
