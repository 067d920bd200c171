"""DVC data versions on a moto S3 remote: content-only hashes, pull into a fresh directory."""

from __future__ import annotations

import pandas as pd
import pytest

from pluto.atomic import write_bytes, write_with
from pluto.data_version import checkout_data, commit_data, table_hash

pytestmark = pytest.mark.integration


def _tables(work, ingested_at):
    """The stage tables, written as the stages write them: atomically (a new file renamed over the old)."""
    def parquet(path, frame):
        write_with(path, lambda tmp: frame.to_parquet(tmp))

    parquet(work / "catalog.parquet", pd.DataFrame({"slide_id": ["a1", "b2"], "status": ["ok", "ok"], "ingested_at": ingested_at}))
    parquet(work / "qc" / "a1" / "qc.parquet", pd.DataFrame({"slide_id": ["a1"], "keep": [True]}))
    write_bytes(work / "qc" / "a1" / "masks.npz", b"not versioned")
    parquet(work / "tiles" / "part-00000.parquet", pd.DataFrame({"slide_id": ["a1"] * 3, "x_l0": [0, 224, 448]}))
    write_bytes(work / "tiles" / "spec.json", b'{"mode": "grid"}')


def test_version_ignores_ingest_time_and_pulls_into_fresh_dir(s3_buckets, tmp_path):
    endpoint, data_bucket, _ = s3_buckets
    remote = f"s3://{data_bucket}/dvc"
    work = tmp_path / "work"
    _tables(work, ["2026-01-01T00:00:00", "2026-01-01T00:00:01"])
    v1 = commit_data(work, remote, endpoint)
    assert v1.md5.endswith(".dir") and v1.nfiles == 4  # catalog, qc table, shard, spec; not masks
    _tables(work, ["2027-05-05T00:00:00", "2027-05-05T00:00:00"])
    assert commit_data(work, remote, endpoint).md5 == v1.md5  # re-ingest of the same slides: same version

    fresh = tmp_path / "fresh"
    restored = checkout_data(fresh, work / "data.dvc", remote, endpoint, md5=v1.md5)
    assert restored.md5 == v1.md5
    assert table_hash(fresh / "catalog.parquet") == table_hash(work / "catalog.parquet")
    assert (fresh / "tiles" / "part-00000.parquet").read_bytes() == (work / "tiles" / "part-00000.parquet").read_bytes()
    assert not (fresh / "qc" / "a1" / "masks.npz").exists()
