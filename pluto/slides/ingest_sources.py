"""What an ingest reads: the file listing of a folder or `s3://` prefix, and the csv side tables.

Listing is cheap (names, sizes, mtimes or ETags; no bytes read) and gives each file a
fingerprint, so an ingest re-run can tell a finished file from a changed one without reading it.
A listing can be split into batch files (`save_sources`/`load_sources`) for the Dask fan-out.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pluto.atomic import write_bytes
from pluto.errors import PlutoError, QuarantineReason, SlideError
from pluto.paths import PathEscapeError, safe_join


@dataclass(frozen=True)
class SlideSource:
    """One listed file. `local` is its resolved local path ("" for S3 objects and escaping paths);
    `stamp` is the local mtime in ns or the S3 ETag; `escape` is non-empty when the path leaves the root."""

    uri: str
    file_name: str
    local: str
    bytes: int
    stamp: str
    escape: str = ""
    bucket: str = ""
    key: str = ""

    @property
    def fingerprint(self) -> str:
        """Size and stamp: equal fingerprints mean the same bytes without reading them ("" when unknown)."""
        return "" if self.escape else f"{self.bytes}:{self.stamp}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SlideSource":
        return cls(**d)


def resolve_inside(root: Path, candidate: Path) -> Path:
    """`candidate` resolved (symlinks followed); SlideError(bad_path) when it leaves `root`.

    `candidate` is made absolute first: os.walk of a relative root yields paths relative to the
    cwd, which `safe_join` would otherwise join under `root` a second time."""
    try:
        return safe_join(root, Path(candidate).absolute())
    except PathEscapeError as exc:
        raise SlideError(candidate, QuarantineReason.bad_path, f"resolves to {exc.resolved}, outside {exc.root}") from exc


def _list_local(root: Path) -> list[SlideSource]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            candidate = Path(dirpath) / name
            uri = str(candidate.absolute())
            try:
                local = resolve_inside(root, candidate)
            except SlideError as exc:
                out.append(SlideSource(uri, name, "", 0, "", escape=exc.detail))
                continue
            if not local.is_file():  # dangling link, fifo, socket, device: hashing would fail or block
                out.append(SlideSource(uri, name, "", 0, "", escape=f"{local} is not a regular file"))
                continue
            st = local.stat()
            out.append(SlideSource(uri, name, str(local), st.st_size, str(st.st_mtime_ns)))
    return out


def list_sources(src: str, s3_endpoint_url: str | None = None, s3_region: str = "us-east-1", s3_retries: int = 5) -> list[SlideSource]:
    """Every file under `src` (a folder, walked without following directory links, or an s3:// prefix)."""
    if src.startswith("s3://"):
        from botocore.exceptions import BotoCoreError, ClientError

        from pluto.slides.s3_source import key_escapes, list_s3, s3_client

        try:
            objects = list_s3(s3_client(s3_endpoint_url, s3_region, s3_retries), src)
        except (BotoCoreError, ClientError) as exc:
            raise PlutoError(f"{src}: listing failed after retries: {type(exc).__name__}: {exc}") from exc
        return [
            SlideSource(o.uri, os.path.basename(o.rel_key), "", o.bytes, o.etag,
                        escape="key leaves the prefix" if key_escapes(o.rel_key) else "", bucket=o.bucket, key=o.key)
            for o in objects
        ]  # fmt: skip
    root = Path(src)
    if not root.is_dir():
        raise PlutoError(f"{src}: not a directory or s3:// prefix")
    return _list_local(root)


def save_sources(path: Path, sources: list[SlideSource]) -> Path:
    """Write a listing (or one batch of it) as JSON, atomically."""
    return write_bytes(path, json.dumps([s.to_dict() for s in sources]).encode())


def load_sources(path: Path) -> list[SlideSource]:
    return [SlideSource.from_dict(d) for d in json.loads(Path(path).read_text())]


def read_keyed_csv(path: Path | str | None, value_cols: tuple[str, ...]) -> dict[str, dict[str, Any]]:
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
            if rec[k] and (os.path.basename(rec[k]) != rec[k] or rec[k] in (".", "..")):
                raise PlutoError(f"{path}: {k} {rec[k]!r} is a path; give the file name or slide_id")
            if rec[k]:
                out[rec[k]] = values
    return out


def lookup(table: dict[str, dict[str, Any]], slide_id: str, file_name: str) -> dict[str, Any]:
    return table.get(slide_id) or table.get(file_name) or {}
