"""Ingest one file: fetch (S3) or read it, hash it, pre-flight it, and write its record.

The record (`<out_dir>/ingest/records/<kk>/<key>.json`, key = sha256 of the URI, written
atomically) holds the slide id (sha256 of the bytes), the local path, the slide's geometry or its
quarantine reason, its DICOM series (if any), the file's listing fingerprint and the pre-flight settings. It is the unit of
work of the fan-out (a Dask worker writes the records of its batch) and of resumption: a file
whose fingerprint and settings match its record is neither downloaded nor read again, so a run
that died part-way (S3 outage, killed worker) resumes where it stopped. The catalog is merged
from the records at the end (`pluto.slides.ingest.write_catalog`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pluto.atomic import write_bytes
from pluto.errors import PlutoError, QuarantineReason, SlideError
from pluto.slides.decode_check import check_decode
from pluto.slides.geometry import plan_read
from pluto.slides.handles import open_slide
from pluto.slides.ingest_sources import SlideSource, load_sources, lookup, read_keyed_csv
from pluto.slides.metadata import MAX_DIMENSION_PX, MPP_RANGE, SlideInfo, float_or_none
from pluto.slides.reader import read_request

log = logging.getLogger(__name__)

PREFLIGHT_TILE_PX = 224
PREFLIGHT_VERSION = 2  # bumped when pre-flight checks more (2: decode_check), so older records are re-checked
RECORDS_DIR = Path("ingest") / "records"
ProgressFn = Callable[[int, int, str], None]  # (done, total, file name)


@dataclass(frozen=True)
class IngestOptions:
    """Settings that decide a file's record (and where S3 objects come from)."""

    mpp_overrides_csv: Path | None = None  # csv: slide (file name or slide_id), mpp
    mpp_range: tuple[float, float] = MPP_RANGE
    max_dimension_px: int = MAX_DIMENSION_PX
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_retries: int = 5  # retries after the first try, per botocore call and per whole download, each with backoff
    s3_cache_max_bytes: int | None = None  # bound of the local copies of S3 slides (None: keep them all)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(8 * 2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def record_path(out_dir: Path, uri: str) -> Path:
    key = hashlib.sha256(uri.encode()).hexdigest()[:32]
    return Path(out_dir) / RECORDS_DIR / key[:2] / f"{key}.json"


def read_record(out_dir: Path, uri: str) -> dict[str, Any] | None:
    path = record_path(out_dir, uri)
    return json.loads(path.read_text()) if path.is_file() else None


def preflight(
    path: Path, mpp_override: float | None, mpp_range: tuple[float, float], max_dimension_px: int
) -> tuple[SlideInfo | None, SlideError | None, str]:
    """Open, check MPP, decode a small patch of every level, compare the read path with an independent
    decoder (`decode_check`), and read one tile through the read path.

    Returns the slide's info (None when it does not open), the first error (None when usable) and
    the DICOM series the file belongs to ("" for other formats).
    """
    try:
        handle = open_slide(path, mpp_override, mpp_range=mpp_range, max_dimension_px=max_dimension_px)
    except SlideError as exc:
        return None, exc, ""
    with handle:
        info, series = handle.info, handle.series_uid
        try:
            mpp = info.mpp
            for level, (w, h) in enumerate(info.level_dims):
                side = min(16, w, h)
                handle.read_level(level, (w - side) // 2, (h - side) // 2, side, side)
            check_decode(handle)
            x_l0 = max(0, info.width // 2 - PREFLIGHT_TILE_PX // 2)
            y_l0 = max(0, info.height // 2 - PREFLIGHT_TILE_PX // 2)
            read_request(handle, plan_read(info, x_l0, y_l0, mpp, PREFLIGHT_TILE_PX))
        except SlideError as exc:
            return info, exc, series
    return info, None, series


class _Fetcher:
    """Local path and sha256 of a source: hashed in place, or downloaded into the S3 cache.

    The S3 client and cache are made on first use (one per `ingest_files` call), so a batch whose
    files all have records never connects.
    """

    def __init__(self, out_dir: Path, options: IngestOptions) -> None:
        self._out_dir, self._options = out_dir, options
        self._lock = threading.Lock()
        self._s3: tuple[Any, Any] | None = None

    def __call__(self, source: SlideSource) -> tuple[Path, str]:
        """Local path and sha256; an S3 copy stays pinned in the cache until `release(path)`."""
        if not source.bucket:
            return Path(source.local), sha256_file(Path(source.local))
        from pluto.slides.s3_source import S3Object

        client, cache = self._s3_parts()
        obj = S3Object(source.uri, source.bucket, source.key, source.key, source.bytes, source.stamp)
        return cache.fetch(client, obj, self._options.s3_retries, pin=True)

    def release(self, source: SlideSource, path: Path) -> None:
        if source.bucket and self._s3 is not None:
            self._s3[1].unpin(path)

    def _s3_parts(self) -> tuple[Any, Any]:
        from pluto.slides.s3_source import cache_at, s3_client, save_settings

        with self._lock:
            if self._s3 is None:
                o = self._options
                cache_dir = self._out_dir / "cache" / "s3"
                cache = cache_at(cache_dir, o.s3_cache_max_bytes)
                cache.max_bytes = o.s3_cache_max_bytes
                save_settings(cache_dir, o.s3_endpoint_url, o.s3_region, o.s3_retries, o.s3_cache_max_bytes)
                self._s3 = (s3_client(o.s3_endpoint_url, o.s3_region, o.s3_retries), cache)
            return self._s3

    def close(self) -> None:
        if self._s3 is not None:
            self._s3[1].save_index()


def _reusable_bytes(prev: dict[str, Any] | None, source: SlideSource) -> bool:
    """The record describes these bytes and, for a local file, it is still there (an S3 slide's cached
    copy may have been evicted by a bounded cache: its record still names the bytes)."""
    if prev is None or not source.fingerprint or prev["fingerprint"] != source.fingerprint or not prev["path"]:
        return False
    if source.bucket:
        return True
    local = Path(prev["path"])
    return local.is_file() and local.stat().st_size == prev["bytes"]


def ingest_file(
    source: SlideSource,
    out_dir: Path,
    options: IngestOptions,
    overrides: dict[str, dict[str, Any]],
    fetch: _Fetcher,
) -> dict[str, Any]:
    """The file's record, written to `record_path(out_dir, uri)` unless its current record still holds.

    `overrides` is the MPP override table (`read_keyed_csv(csv, ("mpp",))`). Infrastructure errors
    (S3 unreachable after retries) raise PlutoError naming the URI; bad slides only change the record.
    """
    prev = read_record(out_dir, source.uri)
    if source.escape:
        err = SlideError(source.uri, QuarantineReason.bad_path, source.escape)
        return _store(out_dir, source, hashlib.sha256(source.uri.encode()).hexdigest(), None, 0, None, err, None, options, prev)
    reuse = _reusable_bytes(prev, source)
    if reuse and all(prev.get(k) == v for k, v in _probe_settings(_override(overrides, prev["slide_id"], source), options).items()):
        return prev
    path, sha = (Path(prev["path"]), prev["slide_id"]) if reuse and not source.bucket else fetch(source)
    try:
        override = _override(overrides, sha, source)
        info, err, series = preflight(path, override, options.mpp_range, options.max_dimension_px)
        if err is not None:
            log.debug("%s quarantined: %s", source.uri, err)
        return _store(out_dir, source, sha, path, path.stat().st_size, info, err, override, options, prev, series)
    finally:
        fetch.release(source, path)


def _override(overrides: dict[str, dict[str, Any]], sha: str, source: SlideSource) -> float | None:
    mpp = lookup(overrides, sha, source.file_name).get("mpp")
    return float(mpp) if mpp else None


def _probe_settings(override: float | None, options: IngestOptions) -> dict[str, Any]:
    """The settings a pre-flight result depends on, as stored in the record (JSON types)."""
    return {"mpp_override": override, "mpp_range": [float(x) for x in options.mpp_range], "max_dimension_px": int(options.max_dimension_px),
            "preflight": PREFLIGHT_VERSION}


def _store(out_dir, source, sha, path, nbytes, info, err, override, options, prev, series="") -> dict[str, Any]:
    record = {
        "uri": source.uri,
        "file_name": source.file_name,
        "fingerprint": source.fingerprint,
        "slide_id": sha,
        "path": str(path) if path else "",
        "bytes": nbytes,
        "info": info.to_dict() if info else None,
        "reason": err.reason.value if err else "",
        "detail": err.detail if err else "",
        "series": series,
        **_probe_settings(override, options),
    }
    if record != prev:
        write_bytes(record_path(out_dir, source.uri), json.dumps(record, sort_keys=True).encode())
    return record


def ingest_files(
    sources: list[SlideSource],
    out_dir: Path,
    options: IngestOptions,
    *,
    workers: int = 1,
    on_progress: ProgressFn | None = None,
) -> list[dict[str, Any]]:
    """Records of `sources` (in completion order), `workers` files at a time in threads.

    On the first infrastructure error the files not yet started are cancelled and the error is
    raised; the records of the files already done stay on disk for the re-run.
    """
    out_dir = Path(out_dir)
    overrides = read_keyed_csv(options.mpp_overrides_csv, ("mpp",))
    not_numbers = sorted(k for k, v in overrides.items() if "mpp" in v and float_or_none(v["mpp"]) is None)
    if not_numbers:
        raise PlutoError(f"{options.mpp_overrides_csv}: mpp is not a number for {not_numbers}")
    fetch = _Fetcher(out_dir, options)
    records: list[dict[str, Any]] = []
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        futures = [pool.submit(ingest_file, s, out_dir, options, overrides, fetch) for s in sources]
        for done, fut in enumerate(as_completed(futures), 1):
            records.append(fut.result())
            if on_progress is not None:
                on_progress(done, len(sources), records[-1]["file_name"])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        fetch.close()
    return records


def ingest_batch(
    listing: Path, out_dir: Path, options: IngestOptions, *, workers: int = 1, on_progress: ProgressFn | None = None
) -> list[dict[str, Any]]:
    """`ingest_files` over a listing file: the whole listing (`ingest`) or one fan-out batch of it
    (`pluto.fanout.split_sources`, one Dask task)."""
    return ingest_files(load_sources(listing), out_dir, options, workers=workers, on_progress=on_progress)
