"""`qc` flow: fan-out of `pluto.qc.run_qc` over slide batches on Dask, merged into work/qc/."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows.common import cached_or_refresh, dask_runner, resolve, stage_cache_key, stage_run, was_cached
from pluto.data_version import table_hash, tables_hash
from pluto.fanout import QC_SUMMARY, merge_qc, prune_store, split_catalog
from pluto.qc import QCParams


@task(cache_key_fn=stage_cache_key, persist_result=True, result_serializer="json")
def qc_batch(
    batch_catalog: str, out_dir: str, params: QCParams, mpp_range: tuple[float, float], input_hash: str, config_hash: str
) -> dict[str, int]:
    from pluto.qc import run_qc

    summary = run_qc(Path(batch_catalog), Path(out_dir), params=params, mpp_range=mpp_range)
    return {"slides": len(summary), "flagged": int((summary["status"] != "ok").sum()), "cells_kept": int(summary["n_keep"].sum())}


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
    fanout = s.paths.work_dir / ".fanout"
    batches = split_catalog(s.paths.catalog, s.chain.fanout_batch_slides, fanout / "qc-batches")
    config_hash = s.config_hash("qc", "slides")
    params = replace(s.qc, workers=1)  # Dask gives the parallelism
    outs, futures = [], []
    with dask_runner(s) as runner:
        for batch in batches:
            input_hash = table_hash(batch)
            out = fanout / "qc" / f"{input_hash}-{config_hash}"
            run = cached_or_refresh(qc_batch, [out / QC_SUMMARY])
            outs.append(out)
            futures.append(runner.submit(run, parameters={
                "batch_catalog": str(batch), "out_dir": str(out), "params": params,
                "mpp_range": (s.slides.mpp_min, s.slides.mpp_max), "input_hash": input_hash, "config_hash": config_hash,
            }))
        results = [f.result() for f in futures]
        cached = all(was_cached(f.state) for f in futures)
    summary = merge_qc(outs, s.paths.qc_dir)
    prune_store(fanout / "qc", outs)
    report = qc_report(str(s.paths.qc_dir), str(s.paths.catalog))
    qc_hash = tables_hash([s.paths.qc_dir / QC_SUMMARY, *s.paths.qc_dir.glob("*/qc.parquet")])
    counts = {k: sum(r[k] for r in results) for k in ("slides", "flagged", "cells_kept")}
    with stage_run(s, "qc", parent_run_id) as tracker:
        tracker.log_params({"batches": len(batches), "cached": cached, "qc_hash": qc_hash})
        tracker.log_metrics({k: float(v) for k, v in counts.items()})
        tracker.log_artifact(Path(report))
        create_markdown_artifact(key="qc-summary", markdown=qc_markdown(summary, report, tracker.url), description="QC summary of the cohort")
    return {**counts, "batches": len(batches), "cached": cached, "qc_hash": qc_hash}
