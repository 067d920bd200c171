"""A cohort larger than the S3 cache bound is ingested, QC'd and tiled from a real S3 API (moto).

The local copies never take more than the bound (a sampler thread watches the cache folder, files
being downloaded included), evicted copies are fetched again when QC or tiling opens them, and
every output equals the one made from the same files on local disk.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pluto.slides import clear_pool, ingest, write_pyramid

N_SLIDES = 4


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, cmu_rgb: np.ndarray) -> Path:
    """Four different pyramids of real tissue (crops of the bundled slide), 0.5 um/px."""
    d = tmp_path_factory.mktemp("cohort")
    for k in range(N_SLIDES):
        crop = np.ascontiguousarray(cmu_rgb[k * 300 : k * 300 + 2000, k * 50 : k * 50 + 1800])
        write_pyramid(d / f"slide{k}.tiff", crop, 0.5, 2)
    return d


class _Sampler(threading.Thread):
    """Largest total size of the files in `folder` seen, sampled every millisecond."""

    def __init__(self, folder: Path) -> None:
        super().__init__(daemon=True)
        self.folder, self.peak, self.stop = folder, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            total = 0
            for p in list(self.folder.glob("*")) if self.folder.is_dir() else []:
                if p.name not in ("index.json", "settings.json"):
                    try:
                        total += p.stat().st_size
                    except FileNotFoundError:  # evicted or renamed between listing and stat
                        pass
            self.peak = max(self.peak, total)
            self.stop.wait(0.001)


def _pipeline(src: str, work: Path, settings_env: dict[str, str] | None = None) -> dict[str, pd.DataFrame]:
    """Ingest (through `pluto ingest` with `settings_env` when given, as a user sets the bound), QC, tile."""
    from typer.testing import CliRunner

    from pluto.cli import app
    from pluto.qc import load_qc, run_qc
    from pluto.tiling.cohort import tile_cohort
    from pluto.tiling.manifest import read_manifest

    if settings_env is None:
        catalog = ingest(src, work, workers=2)
    else:
        done = CliRunner().invoke(app, ["ingest", src, "--out", str(work), "--workers", "2"], env=settings_env)
        assert done.exit_code == 0, done.output[-2000:] + repr(done.exception)
        catalog = pd.read_parquet(work / "catalog.parquet")
    clear_pool()
    qc = run_qc(work / "catalog.parquet", work / "qc")
    clear_pool()
    tile_cohort(work / "catalog.parquet", work / "qc", work / "tiles", mpps=(0.5, 1.0), tile_pxs=(224,))
    cells = pd.concat([load_qc(work / "qc", s).cells for s in sorted(catalog["slide_id"])], ignore_index=True)
    manifest = read_manifest(work / "tiles").drop(columns=["path"]).sort_values(["slide_id", "mpp", "y_l0", "x_l0"])
    return {
        "catalog": catalog.drop(columns=["uri", "path", "ingested_at"]).sort_values("slide_id").reset_index(drop=True),
        "qc": qc.sort_values("slide_id").reset_index(drop=True),
        "cells": cells,
        "manifest": manifest.reset_index(drop=True),
    }


@pytest.mark.integration
def test_cohort_larger_than_the_cache_bound(moto_server, aws_env, tmp_path: Path, cohort: Path) -> None:
    import boto3

    from pluto.slides.s3_source import cache_at

    sizes = sorted(p.stat().st_size for p in cohort.iterdir())
    bound = sizes[-1] + sizes[0] // 2  # room for one slide at a time: the cohort is over twice the bound
    assert sum(sizes) > 2 * bound
    s3 = boto3.client("s3", endpoint_url=moto_server.url, region_name="us-east-1")
    s3.create_bucket(Bucket="bounded")
    for p in sorted(cohort.iterdir()):
        s3.upload_file(str(p), "bounded", f"cohort/{p.name}")

    cache_dir = tmp_path / "s3work" / "cache" / "s3"
    sampler = _Sampler(cache_dir)
    sampler.start()
    try:
        remote = _pipeline("s3://bounded/cohort", tmp_path / "s3work", {
            "PLUTO_S3__ENDPOINT_URL": moto_server.url, "PLUTO_S3__RETRIES": "1", "PLUTO_S3__CACHE_MAX_BYTES": str(bound)})
    finally:
        sampler.stop.set()
        sampler.join()
    local_src = tmp_path / "local"
    shutil.copytree(cohort, local_src)
    local = _pipeline(str(local_src), tmp_path / "localwork")

    assert 0 < sampler.peak <= bound, f"cache held {sampler.peak} bytes, bound {bound}"
    assert sum(p.stat().st_size for p in cache_at(cache_dir).copies()) <= bound
    assert cache_at(cache_dir).downloads > N_SLIDES  # copies were evicted and fetched again for QC and tiling
    assert (remote["catalog"]["status"] == "ok").all() and len(remote["catalog"]) == N_SLIDES
    assert len(remote["manifest"]) > 0
    for name in ("catalog", "qc", "cells", "manifest"):
        pd.testing.assert_frame_equal(remote[name], local[name], check_like=True, obj=name)
