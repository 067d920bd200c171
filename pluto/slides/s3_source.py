"""Slides from `s3://bucket/prefix`: listing and a content-addressed local cache.

Credentials come only from the standard AWS chain (environment, config files, instance role);
nothing here reads, stores or logs them. A downloaded object is stored as `<sha256><suffix>`
under the cache directory, and an index (uri + ETag -> sha256) lets a re-ingest skip objects
that have not changed.
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
from pluto.errors import PlutoError

log = logging.getLogger(__name__)
_CHUNK = 8 * 2**20


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
    """Content-addressed local copies of S3 objects, with an ETag index to skip unchanged ones."""

    def __init__(self, cache_dir: Path) -> None:
        self.dir = Path(cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._index_path = self.dir / "index.json"
        self._lock = threading.Lock()
        self._index: dict[str, dict[str, str]] = (
            json.loads(self._index_path.read_text()) if self._index_path.is_file() else {}
        )

    def fetch(self, client: Any, obj: S3Object, retries: int) -> tuple[Path, str]:
        """(local path, sha256 hex) of the object, downloading it unless the cache already has it."""
        with self._lock:
            known = self._index.get(obj.uri)
        if known and known["etag"] == obj.etag:
            path = self.dir / known["file"]
            if path.is_file() and path.stat().st_size == obj.bytes:
                return path, known["sha256"]
        path, sha = self._download(client, obj, retries)
        with self._lock:
            self._index[obj.uri] = {"etag": obj.etag, "sha256": sha, "file": path.name}
        return path, sha

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
