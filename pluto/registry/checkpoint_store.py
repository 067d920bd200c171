"""Large checkpoints go straight to the checkpoint store: S3 with multipart upload, or a local folder.

A ViT-G training checkpoint is several GB: streaming it through the MLflow server would time out
and double the traffic. It is uploaded with boto3's managed transfer (parts of `chunk_mb`,
`max_concurrency` in parallel) under a content-addressed key, and the model version records the
URI and sha256. Same bytes -> same key, so a retried upload finds the object and skips the work.
Credentials come from the standard AWS environment/config; boto3 is imported lazily.
A `file://` store (the embedded default, under the work dir) keeps the same layout on disk, so
the demo's checkpoints outlive the demo's servers.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pluto.errors import CheckpointError

log = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass(frozen=True)
class CheckpointRef:
    uri: str  # s3://bucket/key or file:///path
    sha256: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CheckpointRef":
        return cls(uri=str(d["uri"]), sha256=str(d["sha256"]), bytes=int(d["bytes"]))


def sha256_file(path: Path, block_bytes: int = 8 * MIB) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(block_bytes):
            h.update(block)
    return h.hexdigest()


def s3_client(endpoint_url: str | None, region: str, retries: int = 5) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=endpoint_url, region_name=region,
        config=Config(retries={"max_attempts": retries, "mode": "adaptive"}),
    )


def upload_checkpoint(
    path: Path,
    dest_prefix: str,
    *,
    endpoint_url: str | None = None,
    region: str = "us-east-1",
    threshold_mb: int = 64,
    chunk_mb: int = 64,
    max_concurrency: int = 8,
) -> CheckpointRef:
    """Upload `path` to `dest_prefix/<sha256[:16]>/<name>` (multipart above `threshold_mb`)."""
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import ClientError

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    url = urlparse(dest_prefix)
    if url.scheme == "file":
        return _copy_to_folder(path, Path(url.path))
    if url.scheme != "s3" or not url.netloc:
        raise CheckpointError(f"{dest_prefix}: checkpoint destination must be s3://bucket/prefix or file:///folder")
    digest = sha256_file(path)
    size = path.stat().st_size
    key = "/".join(p for p in (url.path.strip("/"), digest[:16], path.name) if p)
    ref = CheckpointRef(uri=f"s3://{url.netloc}/{key}", sha256=digest, bytes=size)
    s3 = s3_client(endpoint_url, region)
    try:
        head = s3.head_object(Bucket=url.netloc, Key=key)
        if head["ContentLength"] == size and head.get("Metadata", {}).get("sha256") == digest:
            log.info("checkpoint %s already at %s; upload skipped", path.name, ref.uri)
            return ref
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in {"404", "NoSuchKey", "NotFound"}:
            raise CheckpointError(f"{ref.uri}: cannot query object store ({exc})") from exc
    cfg = TransferConfig(
        multipart_threshold=threshold_mb * MIB, multipart_chunksize=chunk_mb * MIB, max_concurrency=max_concurrency
    )
    try:
        s3.upload_file(str(path), url.netloc, key, ExtraArgs={"Metadata": {"sha256": digest}}, Config=cfg)
    except (ClientError, OSError) as exc:
        raise CheckpointError(f"{path}: upload to {ref.uri} failed ({exc})") from exc
    log.info("checkpoint %s (%.1f MiB) uploaded to %s", path.name, size / MIB, ref.uri)
    return ref


def _copy_to_folder(path: Path, root: Path) -> CheckpointRef:
    """The file-store upload: `root/<sha256[:16]>/<name>`, written atomically, skipped when already there."""
    from pluto.atomic import atomic_path

    digest = sha256_file(path)
    target = root / digest[:16] / path.name
    ref = CheckpointRef(uri=target.resolve().as_uri(), sha256=digest, bytes=path.stat().st_size)
    if target.is_file() and target.stat().st_size == ref.bytes and sha256_file(target) == digest:
        log.info("checkpoint %s already at %s; copy skipped", path.name, ref.uri)
        return ref
    try:
        with atomic_path(target) as tmp:
            shutil.copyfile(path, tmp)
    except OSError as exc:
        raise CheckpointError(f"{path}: copy to {ref.uri} failed ({exc})") from exc
    log.info("checkpoint %s (%.1f MiB) stored at %s", path.name, ref.bytes / MIB, ref.uri)
    return ref


def download_checkpoint(ref: CheckpointRef, dest: Path, *, endpoint_url: str | None = None, region: str = "us-east-1") -> Path:
    """Fetch `ref` to `dest` and verify its sha256 (raises CheckpointError on mismatch)."""
    url = urlparse(ref.uri)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    if url.scheme == "file":
        if not Path(url.path).is_file():
            raise CheckpointError(f"{ref.uri}: checkpoint not found in the file store")
        shutil.copyfile(url.path, tmp)
    else:
        s3_client(endpoint_url, region).download_file(url.netloc, url.path.lstrip("/"), str(tmp))
    got = sha256_file(tmp)
    if got != ref.sha256:
        tmp.unlink()
        raise CheckpointError(f"{ref.uri}: sha256 {got} does not match the recorded {ref.sha256}")
    tmp.replace(dest)
    return dest
