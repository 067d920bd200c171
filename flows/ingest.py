"""`ingest` flow: the slide listing fanned out in batches on Dask, merged into work/catalog.parquet.

Each batch task writes one record per file (`pluto.slides.ingest_file`); it is cached on the
batch's listing (URIs, sizes, mtimes or ETags) and the config, and a re-run after a failure only
reads the files without a record. The catalog is merged from the records in one atomic write.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.common import cached_or_refresh, dask_runner, io_retries, resolve, stage_cache_key, stage_run, was_cached
from pluto.code_version import code_version
from pluto.config import Settings
from pluto.data_version import table_hash
from pluto.fanout import split_sources
from pluto.slides.ingest_file import IngestOptions, record_path
from pluto.slides.ingest_sources import SlideSource, load_sources


def ingest_source(s: Settings) -> str:
    return s.chain.ingest_prefix or str(s.paths.data_root / "wsi")


@task
def list_slides(src: str, endpoint_url: str | None, region: str, retries: int) -> list[SlideSource]:
    from pluto.slides.ingest_sources import list_sources

    return list_sources(src, endpoint_url, region, retries)


@task(cache_key_fn=stage_cache_key, persist_result=True, result_serializer="json")
def ingest_slide_batch(
    batch: str, work_dir: str, options: IngestOptions, input_hash: str, config_hash: str, code_hash: str
) -> dict[str, int]:
    from pluto.slides.ingest_file import ingest_batch

    records = ingest_batch(Path(batch), Path(work_dir), options)
    return {"files": len(records), "ok": sum(not r["reason"] for r in records)}


@task
def merge_catalog(work_dir: str, batches: list[str], metadata_csv: Path | None, default_stain: str) -> dict[str, int]:
    from pluto.slides.ingest import write_catalog

    catalog = write_catalog(Path(work_dir), [Path(b) for b in batches], metadata_csv=metadata_csv, default_stain=default_stain)
    return {"slides": len(catalog), "ok": int((catalog["status"] == "ok").sum())}


@flow(name="ingest")
def ingest_flow(config: dict[str, Any] | None = None, parent_run_id: str | None = None) -> dict[str, Any]:
    s = resolve(config)
    src = ingest_source(s)
    work = s.paths.work_dir
    options = IngestOptions(
        mpp_overrides_csv=s.slides.mpp_overrides_csv, mpp_range=(s.slides.mpp_min, s.slides.mpp_max),
        max_dimension_px=s.slides.max_dimension_px, s3_endpoint_url=s.s3.endpoint_url, s3_region=s.s3.region,
        s3_retries=s.s3.retries, s3_cache_max_bytes=s.s3.cache_max_bytes,
    )
    sources = io_retries(list_slides, s)(src, s.s3.endpoint_url, s.s3.region, s.s3.retries)
    batches = split_sources(sources, s.chain.fanout_batch_slides, work / ".fanout" / "ingest-batches")
    config_hash = s.config_hash("slides", "ingest")
    code_hash = code_version("pluto.slides.ingest_file")
    futures = []
    with dask_runner(s) as runner:
        for batch in batches:
            records = [record_path(work, source.uri) for source in load_sources(batch)]
            run = cached_or_refresh(io_retries(ingest_slide_batch, s), records)
            futures.append(runner.submit(run, parameters={
                "batch": str(batch), "work_dir": str(work), "options": options,
                "input_hash": hashlib.sha256(batch.read_bytes()).hexdigest()[:16], "config_hash": config_hash,
                "code_hash": code_hash,
            }))
        for f in futures:
            f.result()
        cached = all(was_cached(f.state) for f in futures)
    counts = merge_catalog(str(work), [str(b) for b in batches], s.ingest.metadata_csv, s.ingest.default_stain)
    out = {**counts, "batches": len(batches), "cached": cached, "catalog_hash": table_hash(s.paths.catalog)}
    with stage_run(s, "ingest", parent_run_id) as tracker:
        tracker.log_params({"src": src, "batches": len(batches), "catalog_hash": out["catalog_hash"], "cached": cached})
        tracker.log_metrics({"slides": counts["slides"], "slides_ok": counts["ok"]})
    return out
