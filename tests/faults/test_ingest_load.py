"""Ingest under load (issue 8) and its Dask fan-out (issue 7): generated pyramids of real tissue.

Fast cases use the 60-slide cohort (~45 s with QC and tiling); the 1,000-slide cohort is `slow`
(183 s on the 2-core VM at load ~6; about a third writing the slides, a third QC). Handles are /proc/self/fd entries sampled every 5 ms while ingest runs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench.bench_ingest_load import TILE_SPECS, ResourceSampler, cohort_consistency, dask_ingest, make_cohort
from pluto.slides import ingest
from pluto.slides.ingest_file import record_path

MAX_FDS_PER_THREAD = 4


def _cohort_dir(root: Path, slides: list[Path], bad: bool = False) -> Path:
    """Hard links of `slides` in a folder of their own (+ a zero-byte and a truncated file when `bad`)."""
    root.mkdir(parents=True)
    for p in slides:
        os.link(p, root / p.name)
    if bad:
        (root / "zero.tiff").write_bytes(b"")
        (root / "cut.tiff").write_bytes(slides[0].read_bytes()[:50_000])
    return root


def test_dask_fanout_catalog_equals_single_process(generated_cohort, tmp_path):
    from distributed import Client, LocalCluster

    src = _cohort_dir(tmp_path / "cohort", generated_cohort[:22], bad=True)
    single = ingest(str(src), tmp_path / "single", workers=2)
    work = tmp_path / "dask"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        fanned = dask_ingest(str(src), work, client, batch_slides=5)
        records = sorted((work / "ingest" / "records").rglob("*.json"))
        stamps = [p.stat().st_mtime_ns for p in records]
        again = dask_ingest(str(src), work, client, batch_slides=5)
    assert len(list((work / ".fanout" / "ingest-batches").glob("batch-*.json"))) == 5  # 24 files / 5
    assert len(fanned) == 24 and (fanned["status"] == "ok").sum() == 22
    assert dict(zip(fanned["file_name"], fanned["reason"]))["zero.tiff"] == "empty"
    assert dict(zip(fanned["file_name"], fanned["reason"]))["cut.tiff"] == "truncated"
    pd.testing.assert_frame_equal(fanned.drop(columns="ingested_at"), single.drop(columns="ingested_at"))
    pd.testing.assert_frame_equal(again, fanned)  # re-run: same rows, ingested_at included
    assert [p.stat().st_mtime_ns for p in records] == stamps  # and no record rewritten


@pytest.mark.slow
@pytest.mark.integration
def test_ingest_flow_fans_out_on_two_dask_workers_and_caches(generated_cohort, tmp_path):
    from prefect.testing.utilities import prefect_test_harness

    from flows.ingest import ingest_flow

    src = _cohort_dir(tmp_path / "cohort", generated_cohort[:14], bad=True)
    single = ingest(str(src), tmp_path / "single")
    work = tmp_path / "work"
    config = {"paths": {"work_dir": str(work)}, "mlflow": {"tracking_uri": ""},
              "chain": {"ingest_prefix": str(src), "fanout_batch_slides": 4, "dask_workers": 2, "task_retries": 0}}  # fmt: skip
    with prefect_test_harness(server_startup_timeout=240):
        first = ingest_flow(config)
        second = ingest_flow(config)
    assert (first["batches"], first["slides"], first["ok"], first["cached"], second["cached"]) == (4, 16, 14, False, True)
    assert second["catalog_hash"] == first["catalog_hash"]
    catalog = pd.read_parquet(work / "catalog.parquet")
    pd.testing.assert_frame_equal(catalog.drop(columns="ingested_at"), single.drop(columns="ingested_at"))


def test_rerun_with_changed_file_and_new_override_reprobes_only_those(generated_cohort, tmp_path):
    src = _cohort_dir(tmp_path / "cohort", generated_cohort[:6])
    work = tmp_path / "work"
    first = ingest(str(src), work).set_index("file_name")
    uris = {name: first.loc[name, "uri"] for name in first.index}
    stamps = {n: record_path(work, u).stat().st_mtime_ns for n, u in uris.items()}
    changed = src / "slide-00001.tiff"
    changed.unlink()
    shutil.copy(generated_cohort[10], changed)  # other bytes under the same name
    overrides = tmp_path / "mpp.csv"
    pd.DataFrame([{"slide": "slide-00002.tiff", "mpp": 0.25}]).to_csv(overrides, index=False)
    second = ingest(str(src), work, mpp_overrides_csv=overrides).set_index("file_name")
    rewritten = {n for n, u in uris.items() if record_path(work, u).stat().st_mtime_ns != stamps[n]}
    assert rewritten == {"slide-00001.tiff", "slide-00002.tiff"}
    assert second.loc["slide-00001.tiff", "slide_id"] != first.loc["slide-00001.tiff", "slide_id"]
    assert (second.loc["slide-00002.tiff", "mpp_x"], second.loc["slide-00002.tiff", "mpp_source"]) == (0.25, "override")
    assert second.loc["slide-00003.tiff", "ingested_at"] == first.loc["slide-00003.tiff", "ingested_at"]


def _ingest_measured(src: Path, work: Path) -> tuple[pd.DataFrame, ResourceSampler]:
    with ResourceSampler() as res:
        catalog = ingest(str(src), work, workers=2)
    return catalog, res


def _qc_and_tile(work: Path) -> dict:
    from pluto.qc import QCParams, run_qc
    from pluto.tiling import tile_cohort

    run_qc(work / "catalog.parquet", work / "qc", params=QCParams(workers=2))
    tile_cohort(work / "catalog.parquet", work / "qc", work / "tiles", **TILE_SPECS)
    return cohort_consistency(work)


def test_cohort_of_60_handles_flat_and_catalog_qc_manifest_consistent(generated_cohort, tmp_path):
    small, res20 = _ingest_measured(_cohort_dir(tmp_path / "c20", generated_cohort[:20]), tmp_path / "w20")
    catalog, res60 = _ingest_measured(_cohort_dir(tmp_path / "c60", generated_cohort), tmp_path / "w60")
    assert (len(small), len(catalog), int((catalog["status"] == "ok").sum())) == (20, 60, 60)
    for res in (res20, res60):  # per thread: the file being hashed, OpenSlide's, the direct TIFF reader's, a record
        assert 0 < res.extra_fds <= MAX_FDS_PER_THREAD * 2 and res.end_fds == res.start_fds  # bounded, none leaked
    report = _qc_and_tile(tmp_path / "w60")
    assert report["problems"] == {}
    assert (report["slides"], report["ok"], report["qc_rows"]) == (60, 60, 60)
    assert report["tiled_slides"] > 30 and report["manifest_rows"] > report["tiled_slides"]


@pytest.mark.slow
def test_cohort_of_1000(tmp_path):
    src = tmp_path / "cohort"
    make_cohort(src, 1000)
    catalog, res = _ingest_measured(src, tmp_path / "work")
    assert len(catalog) == 1000 and (catalog["status"] == "ok").all() and catalog["slide_id"].is_unique
    assert 0 < res.extra_fds <= MAX_FDS_PER_THREAD * 2 and res.end_fds == res.start_fds
    report = _qc_and_tile(tmp_path / "work")
    assert report["problems"] == {}
    assert (report["ok"], report["qc_rows"]) == (1000, 1000) and report["tiled_slides"] > 500
