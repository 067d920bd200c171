"""Ingest a folder or `s3://` prefix of slides into `catalog.parquet`.

Every file gets a row: content id (sha256 of its bytes), geometry, MPP and its source, metadata
joined from an optional csv, and status `ok` or `quarantined: <reason>`. A pre-flight check
(opens, every level decodes, MPP sane, a tile decodes through the read path) runs before a slide
is accepted; a bad file is quarantined and the batch goes on. Re-ingesting unchanged files
leaves their rows untouched, `ingested_at` included. Label and macro images are never read.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from pluto.atomic import write_with
from pluto.errors import PlutoError, QuarantineReason, SlideError
from pluto.slides.geometry import plan_read
from pluto.slides.handles import open_slide
from pluto.slides.metadata import MAX_DIMENSION_PX, MPP_RANGE, SlideInfo
from pluto.slides.reader import read_request

log = logging.getLogger(__name__)

CATALOG_COLUMNS = [
    "slide_id", "uri", "path", "file_name", "vendor", "width", "height", "levels", "mpp_x", "mpp_y",
    "mpp_source", "objective", "bytes", "status", "reason", "detail", "stain", "stain_assumed",
    "patient", "site", "organ", "scanner", "ingested_at",
]  # fmt: skip
METADATA_FIELDS = ("patient", "site", "organ", "stain", "scanner")
PREFLIGHT_TILE_PX = 224
ProgressFn = Callable[[int, int, str], None]  # (done, total, file name)


@dataclass(frozen=True)
class _Source:
    uri: str
    file_name: str
    local: Path | None  # None until fetched (S3)
    escape: str  # non-empty when the path escapes the source root


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(8 * 2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_inside(root: Path, candidate: Path) -> Path:
    """`candidate` resolved (symlinks followed); SlideError(bad_path) when it leaves `root`."""
    real_root = root.resolve()
    real = candidate.resolve()
    if real != real_root and real_root not in real.parents:
        raise SlideError(candidate, QuarantineReason.bad_path, f"resolves to {real}, outside {real_root}")
    return real


def preflight(path: Path, mpp_override: float | None, mpp_range: tuple[float, float], max_dimension_px: int) -> tuple[SlideInfo | None, SlideError | None]:
    """Open, check MPP, decode a small patch of every level and one tile through the read path.

    Returns the slide's info (None when it does not open) and the first error (None when usable).
    """
    try:
        handle = open_slide(path, mpp_override, mpp_range=mpp_range, max_dimension_px=max_dimension_px)
    except SlideError as exc:
        return None, exc
    with handle:
        info = handle.info
        try:
            mpp = info.mpp
            for level, (w, h) in enumerate(info.level_dims):
                side = min(16, w, h)
                handle.read_level_openslide(level, (w - side) // 2, (h - side) // 2, side, side)
            x_l0 = max(0, info.width // 2 - PREFLIGHT_TILE_PX // 2)
            y_l0 = max(0, info.height // 2 - PREFLIGHT_TILE_PX // 2)
            read_request(handle, plan_read(info, x_l0, y_l0, mpp, PREFLIGHT_TILE_PX))
        except SlideError as exc:
            return info, exc
    return info, None


def _read_keyed_csv(path: Path | None, value_cols: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """csv rows keyed by `slide` (file name or slide_id), or by `file_name`/`slide_id` columns."""
    if path is None:
        return {}
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    keys = [c for c in ("slide", "slide_id", "file_name") if c in df.columns]
    if not keys:
        raise PlutoError(f"{path}: needs a 'slide', 'slide_id' or 'file_name' column")
    out: dict[str, dict[str, Any]] = {}
    for rec in df.to_dict("records"):
        values = {c: rec[c] for c in value_cols if c in rec and rec[c] != ""}
        for k in keys:
            if rec[k]:
                out[rec[k]] = values
    return out


def _lookup(table: dict[str, dict[str, Any]], slide_id: str, file_name: str) -> dict[str, Any]:
    return table.get(slide_id) or table.get(file_name) or {}


def _row(src: _Source, path: Path | None, slide_id: str, nbytes: int, info: SlideInfo | None, err: SlideError | None, meta: dict[str, Any], default_stain: str) -> dict[str, Any]:
    stain = meta.get("stain")
    return {
        "slide_id": slide_id,
        "uri": src.uri,
        "path": str(path) if path else "",
        "file_name": src.file_name,
        "vendor": info.vendor if info else "",
        "width": info.width if info else 0,
        "height": info.height if info else 0,
        "levels": info.levels if info else 0,
        "mpp_x": info.mpp_x if info else None,
        "mpp_y": info.mpp_y if info else None,
        "mpp_source": info.mpp_source if info else "missing",
        "objective": info.objective if info else None,
        "bytes": nbytes,
        "status": f"quarantined: {err.reason.value}" if err else "ok",
        "reason": err.reason.value if err else "",
        "detail": err.detail if err else "",
        "stain": stain or default_stain,
        "stain_assumed": not stain,
        **{k: meta.get(k, "") for k in ("patient", "site", "organ", "scanner")},
    }


def _list_local(root: Path) -> list[_Source]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            candidate = Path(dirpath) / name
            try:
                local, escape = resolve_inside(root, candidate), ""
            except SlideError as exc:
                local, escape = None, exc.detail
            out.append(_Source(str(candidate.absolute()), name, local, escape))
    return out


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
    on_progress: ProgressFn | None = None,
) -> pd.DataFrame:
    """Ingest every file under `src` (folder or s3:// prefix); write and return `out_dir/catalog.parquet`.

    Quarantined files stay in the catalog with their reason; only infrastructure errors (S3
    unreachable, unreadable csv) raise. S3 objects are cached under `out_dir/cache/s3`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metadata = _read_keyed_csv(metadata_csv, METADATA_FIELDS)
    overrides = _read_keyed_csv(mpp_overrides_csv, ("mpp",))
    fetch: Callable[[_Source], tuple[Path, str]]
    cache = None
    if src.startswith("s3://"):
        from pluto.slides.s3_source import S3Cache, key_escapes, list_s3, s3_client

        client = s3_client(s3_endpoint_url, s3_region, s3_retries)
        cache = S3Cache(out_dir / "cache" / "s3")
        objects = {o.uri: o for o in list_s3(client, src)}
        sources = [
            _Source(o.uri, os.path.basename(o.rel_key), None, "key leaves the prefix" if key_escapes(o.rel_key) else "")
            for o in objects.values()
        ]
        fetch = lambda s: cache.fetch(client, objects[s.uri], s3_retries)  # noqa: E731
    else:
        root = Path(src)
        if not root.is_dir():
            raise PlutoError(f"{src}: not a directory or s3:// prefix")
        sources = _list_local(root)
        fetch = lambda s: (s.local, sha256_file(s.local))  # noqa: E731

    def one(s: _Source) -> dict[str, Any]:
        if s.escape:
            err = SlideError(s.uri, QuarantineReason.bad_path, s.escape)
            return _row(s, None, hashlib.sha256(s.uri.encode()).hexdigest(), 0, None, err, {}, default_stain)
        path, sha = fetch(s)
        mpp = _lookup(overrides, sha, s.file_name).get("mpp")
        info, err = preflight(path, float(mpp) if mpp else None, mpp_range, max_dimension_px)
        if err is not None:
            log.debug("%s quarantined: %s", s.uri, err)
        return _row(s, path, sha, path.stat().st_size, info, err, _lookup(metadata, sha, s.file_name), default_stain)

    rows: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(one, s) for s in sources]
        for done, fut in enumerate(as_completed(futures), 1):
            rows.append(fut.result())
            if on_progress is not None:
                on_progress(done, len(sources), rows[-1]["file_name"])
    if cache is not None:
        cache.save_index()
    catalog = _merge(out_dir / "catalog.parquet", rows)
    n_ok = int((catalog["status"] == "ok").sum())
    log.info("ingest %s: %d files, %d ok, %d quarantined -> %s", src, len(rows), n_ok, len(catalog) - n_ok, out_dir / "catalog.parquet")
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


def _same(a: Any, b: Any) -> bool:
    a_na, b_na = a is None or (isinstance(a, float) and math.isnan(a)), b is None or (isinstance(b, float) and math.isnan(b))
    return a_na and b_na if a_na or b_na else bool(a == b)
