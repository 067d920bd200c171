"""Ingestion: every file catalogued, bad ones quarantined with the right reason, idempotent, local and S3."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from pluto.cli import app
from pluto.slides import CATALOG_COLUMNS, ingest

CMU_SHA = "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"


@pytest.fixture()
def slide_dir(tmp_path: Path, cmu_svs: Path, openslide_fixtures: Path, pyramids: dict[str, Path]) -> Path:
    src = tmp_path / "src"
    (src / "nested").mkdir(parents=True)
    shutil.copy(cmu_svs, src / "nested" / cmu_svs.name)
    for name in ("unreadable.svs", "unopenable.tiff", "histolab_broken.svs", "boxes.png", "small.svs"):
        shutil.copy(openslide_fixtures / name, src / name)
    shutil.copy(pyramids["no_mpp"], src / "no_mpp.tiff")
    (src / "zero.svs").write_bytes(b"")
    (src / "cut.svs").write_bytes(cmu_svs.read_bytes()[:1_000_000])
    (src / "notes.txt").write_text("not a slide")
    outside = tmp_path / "outside.svs"
    shutil.copy(openslide_fixtures / "small.svs", outside)
    os.symlink(outside, src / "escape.svs")
    return src


EXPECTED = {
    "CMU-1-Small-Region.svs": "ok",
    "small.svs": "ok",
    "unreadable.svs": "quarantined: unreadable",
    "unopenable.tiff": "quarantined: unreadable",
    "histolab_broken.svs": "quarantined: not_a_slide",
    "boxes.png": "quarantined: not_a_slide",
    "notes.txt": "quarantined: not_a_slide",
    "no_mpp.tiff": "quarantined: no_mpp",
    "zero.svs": "quarantined: empty",
    "cut.svs": "quarantined: truncated",
    "escape.svs": "quarantined: bad_path",
}


def test_local_ingest_reasons_and_idempotence(slide_dir: Path, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    out = tmp_path / "work"
    cat = ingest(str(slide_dir), out, workers=2, on_progress=lambda d, t, name: seen.append((d, t)))
    assert list(cat.columns) == CATALOG_COLUMNS
    assert dict(zip(cat["file_name"], cat["status"])) == EXPECTED
    assert seen[-1] == (len(EXPECTED), len(EXPECTED))
    cmu = cat.set_index("file_name").loc["CMU-1-Small-Region.svs"]
    assert (cmu.slide_id, cmu.vendor, cmu.width, cmu.height, cmu.levels, cmu.bytes) == (CMU_SHA, "aperio", 2220, 2967, 1, 1938955)
    assert (cmu.mpp_x, cmu.mpp_source, cmu.stain, bool(cmu.stain_assumed), cmu.reason) == (0.499, "header", "H&E", True, "")
    no_mpp = cat.set_index("file_name").loc["no_mpp.tiff"]
    assert (no_mpp.reason, no_mpp.mpp_source, no_mpp.width) == ("no_mpp", "missing", 1536)
    on_disk = pd.read_parquet(out / "catalog.parquet")
    pd.testing.assert_frame_equal(on_disk, cat)
    again = ingest(str(slide_dir), out, workers=1)
    pd.testing.assert_frame_equal(again, cat)  # ingested_at included
    assert not list(out.glob(".*tmp"))


def test_metadata_join_and_mpp_override(slide_dir: Path, tmp_path: Path) -> None:
    meta = tmp_path / "meta.csv"
    pd.DataFrame(
        [
            {"slide": "small.svs", "patient": "P1", "site": "Pittsburgh", "organ": "skin", "stain": "IHC-Ki67", "scanner": "GT450"},
            {"slide": CMU_SHA, "patient": "P2", "site": "", "organ": "lymph node", "stain": "", "scanner": "ScanScope"},
        ]
    ).to_csv(meta, index=False)
    overrides = tmp_path / "mpp.csv"
    pd.DataFrame([{"slide": "no_mpp.tiff", "mpp": 0.5}]).to_csv(overrides, index=False)
    out = tmp_path / "work"
    first = ingest(str(slide_dir), out, metadata_csv=meta).set_index("file_name")
    assert first.loc["no_mpp.tiff", "reason"] == "no_mpp"
    cat = ingest(str(slide_dir), out, metadata_csv=meta, mpp_overrides_csv=overrides).set_index("file_name")
    small, cmu, fixed = cat.loc["small.svs"], cat.loc["CMU-1-Small-Region.svs"], cat.loc["no_mpp.tiff"]
    assert (small.patient, small.organ, small.stain, bool(small.stain_assumed), small.scanner) == ("P1", "skin", "IHC-Ki67", False, "GT450")
    assert (cmu.patient, cmu.site, cmu.stain, bool(cmu.stain_assumed)) == ("P2", "", "H&E", True)
    assert (fixed.status, fixed.mpp_x, fixed.mpp_source) == ("ok", 0.5, "override")
    assert cat.loc["notes.txt", "ingested_at"] == first.loc["notes.txt", "ingested_at"]  # unchanged row kept


def test_cli_exits_zero_with_quarantined(slide_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["ingest", str(slide_dir), "--out", str(tmp_path / "w"), "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "11 files: 2 ok, 9 quarantined" in result.output
    assert (tmp_path / "w" / "catalog.parquet").is_file()


@pytest.mark.integration
def test_s3_ingest(moto_server, aws_env, tmp_path: Path, cmu_svs: Path, openslide_fixtures: Path) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_server.url, region_name="us-east-1")
    s3.create_bucket(Bucket="slides")
    s3.upload_file(str(cmu_svs), "slides", "cohort/a/CMU-1-Small-Region.svs")
    s3.upload_file(str(openslide_fixtures / "histolab_broken.svs"), "slides", "cohort/broken.svs")
    s3.put_object(Bucket="slides", Key="other/ignored.svs", Body=b"x")
    out = tmp_path / "work"
    cat = ingest("s3://slides/cohort", out, s3_endpoint_url=moto_server.url, s3_retries=1).set_index("file_name")
    assert dict(cat["status"]) == {"CMU-1-Small-Region.svs": "ok", "broken.svs": "quarantined: not_a_slide"}
    cmu = cat.loc["CMU-1-Small-Region.svs"]
    assert cmu.uri == "s3://slides/cohort/a/CMU-1-Small-Region.svs" and cmu.slide_id == CMU_SHA
    local = Path(cmu.path)
    assert local.parent == out / "cache" / "s3" and local.name == f"{CMU_SHA}.svs"
    assert hashlib.sha256(local.read_bytes()).hexdigest() == CMU_SHA
    mtime = local.stat().st_mtime_ns
    again = ingest("s3://slides/cohort", out, s3_endpoint_url=moto_server.url).set_index("file_name")
    pd.testing.assert_frame_equal(again, cat)
    assert local.stat().st_mtime_ns == mtime  # unchanged object: not downloaded again
    logs = "".join(p.read_text(errors="ignore") for p in out.rglob("*.json"))
    assert aws_env["AWS_SECRET_ACCESS_KEY"] not in logs


def test_relative_source_folder_lists_its_files(slide_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pluto.slides.ingest_sources import list_sources

    monkeypatch.chdir(slide_dir.parent)
    by_name = {s.file_name: s for s in list_sources(slide_dir.name)}
    assert by_name["CMU-1-Small-Region.svs"].local == str((slide_dir / "nested" / "CMU-1-Small-Region.svs").resolve())
    assert by_name["CMU-1-Small-Region.svs"].escape == ""
    assert by_name["escape.svs"].escape.startswith("resolves to ")


@pytest.mark.integration
def test_failed_s3_downloads_leave_no_open_files(moto_server, aws_env, tmp_path: Path) -> None:
    from pluto.errors import PlutoError
    from pluto.slides.s3_source import S3Cache, S3Object, s3_client

    client = s3_client(moto_server.url, "us-east-1", 0)
    client.create_bucket(Bucket="gone")
    cache = S3Cache(tmp_path / "s3")
    missing = S3Object("s3://gone/x.svs", "gone", "x.svs", "x.svs", 10, "etag")
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(PlutoError, match=r"s3://gone/x.svs: download failed after 3 attempts"):
        cache.fetch(client, missing, 2)
    assert len(os.listdir("/proc/self/fd")) == fds
    assert not list((tmp_path / "s3").glob(".download-*"))
