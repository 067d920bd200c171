"""Ingest a folder or `s3://` prefix of slides into `catalog.parquet`.

Every file gets a row (the files of a DICOM series share one): content id (sha256 of its bytes),
geometry, MPP and its source, metadata joined from an optional csv, and status `ok` or
`quarantined: <reason>`. A pre-flight check
(opens, every level decodes, MPP sane, a tile decodes through the read path) runs before a slide
is accepted; a bad file is quarantined and the batch goes on. Re-ingesting unchanged files
leaves their rows untouched, `ingested_at` included. Label and macro images are never read.

Three steps, the same in one process (`ingest`) and fanned out on Dask (flows/ingest.py): list the
files (`ingest_sources.list_sources`), write one record per file (`ingest_file.ingest_batch`, per
batch of the listing), merge the records into the catalog (`write_catalog`, one atomic write).
"""

from __future__ import annotations

import hashlib
import logging
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from pluto.atomic import write_with
from pluto.errors import PlutoError
from pluto.slides.ingest_file import IngestOptions, ProgressFn, ingest_batch, read_record
from pluto.slides.ingest_sources import list_sources, load_sources, lookup, read_keyed_csv, save_sources
from pluto.slides.metadata import MAX_DIMENSION_PX, MPP_RANGE

log = logging.getLogger(__name__)

CATALOG_COLUMNS = [
    "slide_id", "uri", "path", "file_name", "vendor", "width", "height", "levels", "mpp_x", "mpp_y",
    "mpp_source", "objective", "bytes", "status", "reason", "detail", "stain", "stain_assumed",
    "patient", "site", "organ", "scanner", "ingested_at",
]  # fmt: skip
METADATA_FIELDS = ("patient", "site", "organ", "stain", "scanner")
LISTING = Path("ingest") / "listing.json"


def _row(rec: dict[str, Any], meta: dict[str, Any], default_stain: str) -> dict[str, Any]:
    info = rec["info"] or {}
    stain = meta.get("stain")
    return {
        "slide_id": rec["slide_id"],
        "uri": rec["uri"],
        "path": rec["path"],
        "file_name": rec["file_name"],
        "vendor": info.get("vendor", ""),
        "width": info.get("width", 0),
        "height": info.get("height", 0),
        "levels": len(info.get("level_dims", ())),
        "mpp_x": info.get("mpp_x"),
        "mpp_y": info.get("mpp_y"),
        "mpp_source": info.get("mpp_source", "missing"),
        "objective": info.get("objective"),
        "bytes": rec["bytes"],
        "status": f"quarantined: {rec['reason']}" if rec["reason"] else "ok",
        "reason": rec["reason"],
        "detail": rec["detail"],
        "stain": stain or default_stain,
        "stain_assumed": not stain,
        **{k: meta.get(k, "") for k in ("patient", "site", "organ", "scanner")},
    }


def ingest(
    src: str,
    out_dir: Path,
    *,
    workers: int = 2,
    metadata_csv: Path | None = None,
    mpp_overrides_csv: Path | None = None,
    default_stain: str = "H&E",
    mpp_range: tuple[float, float] = MPP_RANGE,
    max_dimension_px: int = MAX_DIMENSION_PX,
    s3_endpoint_url: str | None = None,
    s3_region: str = "us-east-1",
    s3_retries: int = 5,
    s3_cache_max_bytes: int | None = None,
    on_progress: ProgressFn | None = None,
) -> pd.DataFrame:
    """Ingest every file under `src` (folder or s3:// prefix); write and return `out_dir/catalog.parquet`.

    Quarantined files stay in the catalog with their reason; only infrastructure errors (S3
    unreachable after retries, unreadable csv) raise, and then the previous catalog is left as it
    was while the records of finished files let the re-run resume. S3 objects are cached under
    `out_dir/cache/s3`, in at most `s3_cache_max_bytes` (least recently used copies are deleted
    and fetched again when read; see `s3_source`). `workers` files are processed at a time (threads).
    """
    out_dir = Path(out_dir)
    options = IngestOptions(mpp_overrides_csv, mpp_range, max_dimension_px, s3_endpoint_url, s3_region, s3_retries,
                            s3_cache_max_bytes)
    listing = save_sources(out_dir / LISTING, list_sources(src, s3_endpoint_url, s3_region, s3_retries))
    ingest_batch(listing, out_dir, options, workers=workers, on_progress=on_progress)
    return write_catalog(out_dir, [listing], metadata_csv=metadata_csv, default_stain=default_stain)


def write_catalog(out_dir: Path, listings: list[Path], *, metadata_csv: Path | None = None, default_stain: str = "H&E") -> pd.DataFrame:
    """Merge the records of every file in `listings` (the listing, or its fan-out batches) into
    `out_dir/catalog.parquet`, joining the metadata csv; one atomic write."""
    out_dir = Path(out_dir)
    metadata = read_keyed_csv(metadata_csv, METADATA_FIELDS)
    records = []
    for listing in listings:
        for source in load_sources(listing):
            rec = read_record(out_dir, source.uri)
            if rec is None or rec["fingerprint"] != source.fingerprint:
                raise PlutoError(f"{source.uri}: no ingest record for the listed file; its ingest task did not finish")
            records.append(rec)
    rows = [_row(rec, lookup(metadata, rec["slide_id"], rec["file_name"]), default_stain) for rec in one_per_series(records)]
    catalog = _merge(out_dir / "catalog.parquet", rows)
    n_ok = int((catalog["status"] == "ok").sum())
    log.info("ingest: %d files, %d ok, %d quarantined -> %s", len(rows), n_ok, len(catalog) - n_ok, out_dir / "catalog.parquet")
    return catalog


def _merge(catalog_path: Path, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """New rows merged into the existing catalog by uri; unchanged rows keep their ingested_at."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    old = pd.read_parquet(catalog_path) if catalog_path.is_file() else pd.DataFrame(columns=CATALOG_COLUMNS)
    old_by_uri = {r["uri"]: r for r in old.to_dict("records")}
    merged = {uri: r for uri, r in old_by_uri.items()}
    for row in rows:
        prev = old_by_uri.get(row["uri"])
        same = prev is not None and all(_same(prev[k], row[k]) for k in row)
        merged[row["uri"]] = prev if same else {**row, "ingested_at": now}
    df = pd.DataFrame(list(merged.values()), columns=CATALOG_COLUMNS).sort_values("uri", kind="stable")
    dup = df["slide_id"].duplicated(keep="first")
    if dup.any():
        log.warning("ingest: %d file(s) duplicate the content of another and are left out: %s", int(dup.sum()), ", ".join(df.loc[dup, "uri"]))
        df = df[~dup]
    df = df.reset_index(drop=True).astype({"width": "int64", "height": "int64", "levels": "int64", "bytes": "int64", "stain_assumed": "bool", "mpp_x": "float64", "mpp_y": "float64", "objective": "float64"})
    write_with(catalog_path, lambda p: df.to_parquet(p, index=False))
    return df


def one_per_series(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records with each DICOM series (its files are the instances of one slide) as one record.

    The series record is its first file by URI (OpenSlide opens the whole series from any of them),
    with the summed bytes, a slide id hashed from the members' ids (a single-file series keeps its
    file's id), and the first member's quarantine reason when any member has one.
    """
    out, series = [], {}
    for rec in records:
        if rec.get("series"):
            series.setdefault(rec["series"], []).append(rec)
        else:
            out.append(rec)
    for members in series.values():
        members.sort(key=lambda r: r["uri"])
        bad = next((m for m in members if m["reason"]), None)
        ids = sorted(m["slide_id"] for m in members)
        out.append({
            **members[0],
            "slide_id": ids[0] if len(ids) == 1 else hashlib.sha256("\n".join(ids).encode()).hexdigest(),
            "bytes": sum(m["bytes"] for m in members),
            "reason": bad["reason"] if bad else "",
            "detail": f"{bad['file_name']}: {bad['detail']}" if bad else "",
        })
    return out


def _same(a: Any, b: Any) -> bool:
    a_na, b_na = a is None or (isinstance(a, float) and math.isnan(a)), b is None or (isinstance(b, float) and math.isnan(b))
    return a_na and b_na if a_na or b_na else bool(a == b)
