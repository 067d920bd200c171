"""`qc` flow: `pluto.qc.run_qc` per slide, in slide batches on Dask, merged into work/qc/.

Each slide is a cached task of its own (`qc_slide`, keyed by `pluto.fanout.slide_key`, the QC config
and the code version of pluto.qc and what it imports); a batch task runs its slides' tasks in turn,
so Dask sees one task per batch while a new slide recomputes only itself.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows.common import dask_runner, resolve, run_each_cached, stage_cache_key, stage_run
from pluto.code_version import code_version
from pluto.data_version import tables_hash
from pluto.fanout import QC_SUMMARY, batched, merge_qc, ok_slides, prune_store, slide_key
from pluto.qc import QCParams

QC_FIELDS = ("slide_id", "stain", "mpp_source", "mpp_x", "mpp_y", "width", "height")  # what run_qc reads of a slide


@task(cache_key_fn=stage_cache_key, persist_result=True, result_serializer="json")
def qc_slide(
    slide: dict[str, Any], out_dir: str, params: QCParams, mpp_range: tuple[float, float], input_hash: str, config_hash: str,
    code_hash: str,
) -> dict[str, int]:
    from pluto.fanout import one_slide_catalog
    from pluto.qc import run_qc

    with one_slide_catalog(slide, Path(out_dir).parent) as catalog:
        summary = run_qc(catalog, Path(out_dir), params=params, mpp_range=mpp_range)
    return {"slides": len(summary), "flagged": int((summary["status"] != "ok").sum()), "cells_kept": int(summary["n_keep"].sum())}


@task
def qc_batch(jobs: list[dict[str, Any]], params: QCParams, mpp_range: tuple[float, float]) -> list[dict[str, int]]:
    """Each slide's cached `qc_slide`, recomputed when its folder lacks the summary; adds `recomputed` (0: from the cache)."""
    return run_each_cached(qc_slide, jobs, QC_SUMMARY, params=params, mpp_range=mpp_range)


@task
def qc_report(qc_dir: str, catalog: str) -> str:
    from pluto.qc import write_report

    return str(write_report(Path(qc_dir), Path(catalog)))


def qc_markdown(summary: pd.DataFrame, report: str, run_url: str, top_reasons: int = 5) -> str:
    """The QC artifact: counts, the most frequent flag reasons (each with one example slide) and links.

    Its size does not grow with the cohort (a 500k-slide table would not render); the per-slide
    table is the report's, logged to the MLflow qc run.
    """
    flagged = summary[summary["status"] != "ok"]
    lines = [
        "## QC summary", "",
        f"{len(summary)} slides: {len(summary) - len(flagged)} ok, {len(flagged)} flagged; "
        f"{int(summary['n_keep'].sum())} of {int(summary['n_cells'].sum())} grid cells kept.", "",
    ]
    if len(flagged):
        top = flagged["reason"].value_counts().head(top_reasons)
        rows = [{"reason": reason, "slides": int(n), "example": flagged.loc[flagged["reason"] == reason, "slide_id"].iloc[0]}
                for reason, n in top.items()]
        lines += [pd.DataFrame(rows).to_markdown(index=False), ""]
        if rest := flagged["reason"].nunique() - len(top):
            lines += [f"... and {rest} other reason(s).", ""]
    lines.append(f"Per-slide table: `{report}`" + (f", logged to the [MLflow qc run]({run_url})" if run_url else ""))
    return "\n".join(lines)


@flow(name="qc")
def qc_flow(config: dict[str, Any] | None = None, parent_run_id: str | None = None) -> dict[str, Any]:
    s = resolve(config)
    store = s.paths.work_dir / ".fanout" / "qc"
    slides = ok_slides(s.paths.catalog)
    config_hash = s.config_hash("qc", "slides")
    code_hash = code_version("pluto.qc.run")
    jobs = []
    for rec in slides:
        key = slide_key(rec, QC_FIELDS)
        jobs.append({"slide": rec, "out_dir": str(store / slide_key(rec, (), key, config_hash, code_hash)),
                     "input_hash": key, "config_hash": config_hash, "code_hash": code_hash})
    params = replace(s.qc, workers=1)  # Dask gives the parallelism
    batches = batched(jobs, s.chain.fanout_batch_slides)
    with dask_runner(s) as runner:
        futures = [runner.submit(qc_batch, parameters={"jobs": b, "params": params, "mpp_range": (s.slides.mpp_min, s.slides.mpp_max)})
                   for b in batches]
        results = [r for f in futures for r in f.result()]
    outs = [Path(j["out_dir"]) for j in jobs]
    summary = merge_qc(outs, s.paths.qc_dir)
    prune_store(store, outs)
    report = qc_report(str(s.paths.qc_dir), str(s.paths.catalog))
    qc_hash = tables_hash([s.paths.qc_dir / QC_SUMMARY, *s.paths.qc_dir.glob("*/qc.parquet")])
    counts = {k: sum(r[k] for r in results) for k in ("slides", "flagged", "cells_kept", "recomputed")}
    cached = counts["recomputed"] == 0
    with stage_run(s, "qc", parent_run_id) as tracker:
        tracker.log_params({"batches": len(batches), "cached": cached, "qc_hash": qc_hash, "code_hash": code_hash})
        tracker.log_metrics({k: float(v) for k, v in counts.items()})
        tracker.log_artifact(Path(report))
        create_markdown_artifact(key="qc-summary", markdown=qc_markdown(summary, report, tracker.url), description="QC summary of the cohort")
    return {**counts, "batches": len(batches), "cached": cached, "qc_hash": qc_hash, "code_hash": code_hash}
