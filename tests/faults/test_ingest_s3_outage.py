"""S3 outage mid-ingest against a real moto server on 127.0.0.1 (issue 8).

The server is stopped after a few slides are done: the download retries with backoff (botocore
standard retries inside each attempt, pluto's attempts around them), then ingest fails with an
error naming the object's URI; catalog.parquet keeps its previous version. moto keeps objects in
memory, so after a restart on the same port the bucket is re-created and the same bytes uploaded
again (same ETags). The re-run then downloads only the slides without a record: counted from
the restarted server's request log, and the finished slides' records and cached copies are not
rewritten.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd
import pytest

from pluto.errors import PlutoError
from pluto.slides import ingest
from pluto.slides.ingest_file import record_path

pytestmark = pytest.mark.integration

BUCKET, PREFIX = "outage", "cohort"
N_SLIDES, DONE_BEFORE_OUTAGE = 8, 4


def _upload(url: str, paths: list[Path]) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    if BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=BUCKET)
    for p in paths:
        s3.upload_file(str(p), BUCKET, f"{PREFIX}/{p.name}")


def _slide_gets(log_text: str) -> list[str]:
    """Object downloads in a moto request log (werkzeug access lines); listing calls are not counted."""
    return re.findall(rf'"GET /{BUCKET}/{PREFIX}/(slide-\d+\.tiff)', log_text)


def test_outage_mid_ingest_fails_cleanly_and_the_rerun_resumes(restartable_moto, aws_env, generated_cohort, tmp_path, caplog):
    moto, slides = restartable_moto, generated_cohort[:N_SLIDES]
    src, work = f"s3://{BUCKET}/{PREFIX}", tmp_path / "work"
    opts = {"s3_endpoint_url": moto.url, "s3_retries": 1, "workers": 1}
    _upload(moto.url, slides[:2])
    v1 = ingest(src, work, **opts)
    catalog_v1 = (work / "catalog.parquet").read_bytes()
    _upload(moto.url, slides[2:])

    def stop_after(done: int, total: int, name: str) -> None:
        if done == DONE_BEFORE_OUTAGE:
            moto.stop()

    caplog.set_level(logging.DEBUG, logger="botocore.retries.standard")  # pluto's warnings pass the handler too
    with pytest.raises(PlutoError, match=rf"s3://{BUCKET}/{PREFIX}/slide-\d+\.tiff: download failed after 2 attempts") as failure:
        ingest(src, work, on_progress=stop_after, **opts)
    failed_uri = str(failure.value).split(": ")[0]
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"{failed_uri}: download attempt 1 failed") and "retrying in 0.2s" in m for m in messages)
    assert any(m.startswith("Retry needed, retrying request after delay of") for m in messages)  # botocore backoff
    # the catalog is the previous version, byte for byte; no temporary file is left beside it
    assert (work / "catalog.parquet").read_bytes() == catalog_v1
    assert not [p for p in work.iterdir() if p.name.startswith(".catalog")]
    uris = [f"{src}/{p.name}" for p in slides]
    done = [u for u in uris if record_path(work, u).is_file()]
    assert len(done) >= DONE_BEFORE_OUTAGE and failed_uri not in done and done == uris[: len(done)]
    before = {u: record_path(work, u).stat().st_mtime_ns for u in done}
    cached = {p: p.stat().st_mtime_ns for p in (work / "cache" / "s3").glob("*.tiff")}
    assert len(cached) == len(done)  # no half-downloaded object in the cache

    moto.start()  # same port, empty in-memory state: re-create the bucket and upload the same bytes
    _upload(moto.url, slides)
    upload_log = moto.log_text()
    catalog = ingest(src, work, **opts)
    gets = _slide_gets(moto.log_text()[len(upload_log) :])
    assert sorted(gets) == sorted(u.rsplit("/", 1)[1] for u in uris if u not in done)  # only unfinished slides
    assert {u: record_path(work, u).stat().st_mtime_ns for u in done} == before
    assert all(p.stat().st_mtime_ns == t for p, t in cached.items())
    assert (catalog["status"] == "ok").all() and sorted(catalog["uri"]) == uris
    first = catalog.set_index("uri").loc[v1["uri"], "ingested_at"]
    assert first.tolist() == v1["ingested_at"].tolist()  # rows of the first version untouched
    clean = ingest(src, tmp_path / "clean", **opts)  # the same cohort ingested without an outage
    pd.testing.assert_frame_equal(catalog.drop(columns=["ingested_at", "path"]), clean.drop(columns=["ingested_at", "path"]))


def test_outage_before_listing_names_the_prefix_and_writes_no_catalog(restartable_moto, aws_env, tmp_path):
    restartable_moto.stop()
    with pytest.raises(PlutoError, match=rf"s3://{BUCKET}/{PREFIX}: listing failed after retries: EndpointConnectionError"):
        ingest(f"s3://{BUCKET}/{PREFIX}", tmp_path / "work", s3_endpoint_url=restartable_moto.url, s3_retries=1)
    assert not (tmp_path / "work" / "catalog.parquet").exists()
