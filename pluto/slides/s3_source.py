"""Slides from `s3://bucket/prefix`: listing and a content-addressed, optionally bounded local cache.

Credentials come only from the standard AWS chain (environment, config files, instance role);
nothing here reads, stores or logs them. A downloaded object is stored as `<sha256><suffix>`
under the cache directory, and an index (uri + ETag -> sha256) lets a re-ingest skip objects
that have not changed.

With `max_bytes` the cache holds at most that many bytes (downloads in flight included), so a
cohort larger than the local disk can be ingested, QC'd and tiled: before a download, the least
recently used copies that nobody has pinned are deleted. The catalog keeps pointing at
`<cache>/<sha256><suffix>`; a slide opened after its copy was evicted is fetched again
(`refetch`, with the endpoint and bound the cache recorded in `settings.json`) and checked against
its sha256. Pooled handles of an evicted copy in this process are closed; another process that
still has it open keeps reading it, and the kernel frees its blocks when it closes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pluto.atomic import write_bytes
from pluto.errors import PlutoError, QuarantineReason, SlideError

log = logging.getLogger(__name__)
_CHUNK = 8 * 2**20
SETTINGS_FILE = "settings.json"  # endpoint, region, retries, max_bytes of a cache (never credentials)


@dataclass(frozen=True)
class S3Object:
    uri: str
    bucket: str
    key: str
    rel_key: str  # key relative to the prefix: the catalog file name is its last part
    bytes: int
    etag: str


def split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise PlutoError(f"{uri}: not an s3:// URI")
    bucket, _, prefix = uri[5:].partition("/")
    if not bucket:
        raise PlutoError(f"{uri}: no bucket in URI")
    return bucket, prefix


def s3_client(endpoint_url: str | None, region: str, retries: int) -> Any:
    """A boto3 S3 client with standard-mode retries (exponential backoff) on API calls."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        config=Config(retries={"total_max_attempts": retries + 1, "mode": "standard"}),  # attempts include the first try
    )


def list_s3(client: Any, uri: str) -> list[S3Object]:
    """Every object under the prefix (paginated), sorted by key."""
    bucket, prefix = split_s3_uri(uri)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if key.endswith("/"):
                continue
            out.append(S3Object(f"s3://{bucket}/{key}", bucket, key, key[len(prefix) :], int(obj["Size"]), obj["ETag"].strip('"')))
    return sorted(out, key=lambda o: o.key)


def key_escapes(rel_key: str) -> bool:
    """True for keys that would name a path outside the prefix (`..` segments, absolute)."""
    parts = PurePosixPath(rel_key).parts
    return rel_key.startswith("/") or ".." in parts


class S3Cache:
    """Content-addressed local copies of S3 objects, with an ETag index to skip unchanged ones.

    One instance per directory and process (`cache_at`), so its pins and byte count are shared by
    the ingest threads and by `refetch`.
    """

    def __init__(self, cache_dir: Path, max_bytes: int | None = None) -> None:
        self.dir = Path(cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._index_path = self.dir / "index.json"
        self._lock = threading.Condition()  # notified when a pin or a reservation is released
        self._index: dict[str, dict[str, Any]] = (
            json.loads(self._index_path.read_text()) if self._index_path.is_file() else {}
        )
        self._pins: dict[str, int] = {}  # file name -> holders
        self._reserved = 0  # bytes of downloads in flight
        self.downloads = 0  # objects downloaded by this instance (diagnostics)

    def fetch(self, client: Any, obj: S3Object, retries: int, *, pin: bool = False) -> tuple[Path, str]:
        """(local path, sha256 hex) of the object, downloading it unless the cache already has it.

        With `pin`, the copy is not evicted until `unpin(path)`."""
        with self._lock:
            known = self._index.get(obj.uri)
            if known and known["etag"] == obj.etag:
                path = self.dir / known["file"]
                if path.is_file() and path.stat().st_size == obj.bytes:
                    self._use(path.name, pin)
                    return path, known["sha256"]
            self._make_room(obj)
            self._reserved += obj.bytes
        try:
            path, sha = self._download(client, obj, retries)
        finally:
            with self._lock:
                self._reserved -= obj.bytes
                self._lock.notify_all()
        with self._lock:
            self.downloads += 1
            self._index[obj.uri] = {"etag": obj.etag, "sha256": sha, "file": path.name, "bytes": obj.bytes}
            self._use(path.name, pin)
        return path, sha

    def unpin(self, path: Path) -> None:
        with self._lock:
            name = Path(path).name
            if self._pins.get(name, 0) > 1:
                self._pins[name] -= 1
            else:
                self._pins.pop(name, None)
            self._lock.notify_all()

    def _use(self, name: str, pin: bool) -> None:
        os.utime(self.dir / name)  # mtime = last use: the eviction order, shared with other processes
        if pin:
            self._pins[name] = self._pins.get(name, 0) + 1

    def copies(self) -> list[Path]:
        """The cached copies (not the index, settings or downloads in flight)."""
        return [p for p in self.dir.iterdir() if p.is_file() and not p.name.startswith(".") and p.name not in ("index.json", SETTINGS_FILE)]

    def _make_room(self, obj: S3Object) -> None:
        """Delete least recently used unpinned copies until `obj` fits in `max_bytes` (lock held);
        while pinned copies and downloads in flight leave no room, wait for them (other threads)."""
        if self.max_bytes is None:
            return
        if obj.bytes > self.max_bytes:
            raise PlutoError(f"{obj.uri}: {obj.bytes} bytes do not fit in the S3 cache bound of {self.max_bytes} bytes")
        while not self._evict_for(obj.bytes):
            if not self._pins and not self._reserved:
                raise PlutoError(f"{obj.uri}: no room in the S3 cache of {self.max_bytes} bytes")
            self._lock.wait()

    def _evict_for(self, nbytes: int) -> bool:
        """Evict unpinned copies, least recently used first, until `nbytes` more fit; False if they cannot."""
        copies = sorted(self.copies(), key=lambda p: p.stat().st_mtime_ns)
        used = sum(p.stat().st_size for p in copies) + self._reserved
        for path in copies:
            if used + nbytes <= self.max_bytes:
                return True
            if path.name in self._pins:
                continue
            size = path.stat().st_size
            _close_pooled(path)
            path.unlink()
            used -= size
            log.debug("s3 cache: evicted %s (%d bytes)", path.name, size)
        return used + nbytes <= self.max_bytes

    def _download(self, client: Any, obj: S3Object, retries: int) -> tuple[Path, str]:
        from botocore.exceptions import BotoCoreError, ClientError

        attempt = 0
        while True:
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".download-")
            try:
                digest = hashlib.sha256()
                with os.fdopen(fd, "wb") as fh:  # opened first: a failed get_object must not leak the fd
                    body = client.get_object(Bucket=obj.bucket, Key=obj.key)["Body"]
                    for chunk in iter(lambda: body.read(_CHUNK), b""):
                        digest.update(chunk)
                        fh.write(chunk)
                sha = digest.hexdigest()
                final = self.dir / f"{sha}{PurePosixPath(obj.key).suffix.lower()}"
                os.replace(tmp, final)
                return final, sha
            except (BotoCoreError, ClientError, OSError) as exc:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                if attempt >= retries:
                    raise PlutoError(f"{obj.uri}: download failed after {attempt + 1} attempts: {type(exc).__name__}") from exc
                delay = min(0.2 * 2.0**attempt, 10.0)
                log.warning("%s: download attempt %d failed (%s); retrying in %.1fs", obj.uri, attempt + 1, type(exc).__name__, delay)
                time.sleep(delay)
                attempt += 1

    def save_index(self) -> None:
        """Write the ETag index atomically."""
        with self._lock:
            blob = json.dumps(self._index, indent=1, sort_keys=True)
        write_bytes(self._index_path, blob.encode())

    def entry_of(self, name: str) -> tuple[str, dict[str, Any]] | None:
        """(uri, index entry) of the copy named `name`, None when the index has none."""
        with self._lock:
            return next(((uri, e) for uri, e in self._index.items() if e["file"] == name), None)


_CACHES: dict[tuple[int, str], S3Cache] = {}
_CACHES_LOCK = threading.Lock()


def cache_at(cache_dir: Path, max_bytes: int | None = None) -> S3Cache:
    """This process's cache of `cache_dir` (created on first use with `max_bytes`)."""
    key = (os.getpid(), os.path.abspath(cache_dir))
    with _CACHES_LOCK:
        if key not in _CACHES:
            _CACHES[key] = S3Cache(Path(cache_dir), max_bytes)
        return _CACHES[key]


def save_settings(cache_dir: Path, endpoint_url: str | None, region: str, retries: int, max_bytes: int | None) -> None:
    """Record how to fill the cache again (`refetch` in a later QC, tiling or training process)."""
    blob = {"endpoint_url": endpoint_url, "region": region, "retries": retries, "max_bytes": max_bytes}
    write_bytes(Path(cache_dir) / SETTINGS_FILE, json.dumps(blob, sort_keys=True).encode())


def refetch(path: str | Path) -> bool:
    """Download the evicted copy `path` of an S3 cache again; False when `path` is not in one.

    Raises SlideError(unreadable) when the object's bytes no longer have the sha256 the name records."""
    path = Path(path)
    settings_path = path.parent / SETTINGS_FILE
    if not settings_path.is_file() or not (path.parent / "index.json").is_file():
        return False
    settings = json.loads(settings_path.read_text())
    cache = cache_at(path.parent, settings["max_bytes"])
    found = cache.entry_of(path.name)
    if found is None:
        return False
    uri, entry = found
    bucket, key = split_s3_uri(uri)
    client = s3_client(settings["endpoint_url"], settings["region"], settings["retries"])
    nbytes = entry.get("bytes") or client.head_object(Bucket=bucket, Key=key)["ContentLength"]  # older indexes lack it
    got, sha = cache.fetch(client, S3Object(uri, bucket, key, key, int(nbytes), entry["etag"]), settings["retries"])
    if got.name != path.name:
        raise SlideError(path, QuarantineReason.unreadable, f"{uri} changed since ingest (sha256 {sha}, expected {entry['sha256']})")
    return True


def _close_pooled(path: Path) -> None:
    from pluto.slides.handles import close_pooled

    close_pooled(path)
