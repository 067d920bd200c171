"""Data versions: DVC tracks the work tables (catalog, QC tables, tile manifests), never tiles.

Two DVC places, both plain DVC (`dvc add`, `dvc push`, `dvc pull`, a `data.dvc` per version):

- The work dir is the chain's DVC repository, initialised with `--no-scm` (a temp or scratch work
  dir never touches the project's git): `<work_dir>/.dvc/config` holds the remote
  (`.dvc/config.local` the endpoint of a local S3 such as moto; credentials come from the standard
  AWS environment), and `<work_dir>/data.dvc` points at `<work_dir>/data/`, the tracked folder:

      data/catalog.parquet             catalog without run-time columns (ingested_at)
      data/qc/qc_summary.parquet       QC summary
      data/qc/<slide_id>/qc.parquet    per-cell QC tables (masks and thumbnails stay out)
      data/tiles/*.parquet, *.json     tile manifest shards, spec and tiling summary

- The DVC project (`chain.dvc_project`, the repository root) commits `.dvc/config` and a
  top-level `data.dvc`; `publish` points that `data.dvc` at the champion's data.

Versioned data names slides, not machines: a slide location under `paths.data_root` is stored
relative to it (`portable`), so the same slides in another clone, CI's or a colleague's, give the
same bytes and the same data version, and a restore writes this machine's paths back (`anchored`).

A table is stored twice only where that takes a rewrite: the catalog (without its ingest time) and
the tables naming slide locations (tile shards, tiling summary). The cache type is `hardlink,copy`:
`dvc add` links the tracked files into DVC's cache, `data/` holds hard links of the other stage
tables, and after the add each of them is relinked to its cache object, so one file on disk is the
stage table, the tracked file and the cache object. DVC marks such files read-only;
the stages replace their outputs atomically (a new file, renamed over the old one), so they never
write into the cache. The project shares the work dir's cache (DVC's `cache.dir`), so publishing
links the champion's tables into `<project>/data` rather than copying them.

The data version is the DVC directory hash (`<md5>.dir`), computed from these bytes only: the
ingest timestamp is dropped, so re-ingesting unchanged slides gives the same version. Every MLflow
run and model version records it (`pluto.data_hash`); the retrain logs its `data.dvc`, and
`checkout_data` restores exactly that file and pulls.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from pluto.atomic import write_with
from pluto.errors import PlutoError
from pluto.tiling.manifest import LOCATION_COLUMNS

log = logging.getLogger(__name__)

SNAPSHOT = "data"
REMOTE_NAME = "store"
VOLATILE_COLUMNS = ("ingested_at",)
VERSIONED_GLOBS = ("qc/qc_summary.parquet", "qc/*/qc.parquet", "tiles/*.parquet", "tiles/*.json")
CACHE_TYPE = "hardlink,copy"  # hardlink first: `dvc add` then links files into the cache instead of copying them


@dataclass(frozen=True)
class DataVersion:
    md5: str  # DVC directory hash, "<hex>.dir"
    nfiles: int
    bytes: int
    remote: str

    @property
    def hash(self) -> str:
        return self.md5.removesuffix(".dir")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataVersion":
        return cls(md5=str(d["md5"]), nfiles=int(d["nfiles"]), bytes=int(d["bytes"]), remote=str(d["remote"]))


def table_hash(path: Path, drop_columns: tuple[str, ...] = VOLATILE_COLUMNS) -> str:
    """Content hash of a parquet table (column names and row values, not file bytes), 16 hex.

    Used in stage cache keys: the same rows in the same order give the same hash whatever the
    parquet writer's metadata, and volatile columns (ingest time) do not count.
    """
    import pandas as pd

    from pluto.tiling.manifest import table_hash as frame_hash

    return frame_hash(pd.read_parquet(path), drop=drop_columns)[:16]


def tables_hash(paths: list[Path]) -> str:
    """One hash over several tables (sorted by path), e.g. every QC table of a cohort."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(table_hash(p).encode())
    return h.hexdigest()[:16]


def source_fingerprint(src: str, endpoint_url: str | None = None, region: str = "us-east-1") -> str:
    """Cheap identity of the ingest input: every object's relative name, size and mtime (or ETag).

    Reading every byte of a 500k-slide cohort to decide whether ingest can be skipped would cost
    as much as ingest itself (which computes the slide ids, sha256 of bytes). `src` is a local
    folder or an s3:// prefix.
    """
    h = hashlib.sha256()
    if src.startswith("s3://"):
        from pluto.registry.checkpoint_store import s3_client

        bucket, _, prefix = src.removeprefix("s3://").partition("/")
        pages = s3_client(endpoint_url, region).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        entries = sorted((o["Key"], o["Size"], o["ETag"]) for page in pages for o in page.get("Contents", []))
    else:
        root = Path(src)
        if not root.is_dir():
            raise PlutoError(f"{src}: slide source is not a directory or s3:// prefix")
        files = sorted(p for p in root.rglob("*") if p.is_file())
        entries = [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    for name, size, stamp in entries:
        h.update(f"{name}\0{size}\0{stamp}\n".encode())
    return h.hexdigest()[:16]


def _versioned_files(work_dir: Path) -> list[Path]:
    files = [p for g in VERSIONED_GLOBS for p in work_dir.glob(g) if p.is_file()]
    return sorted(files)


def _located(path: Path) -> list[str]:
    """The location columns a versioned table has (none for JSON and location-free tables)."""
    if path.suffix != ".parquet":
        return []
    import pyarrow.parquet as pq

    return [c for c in LOCATION_COLUMNS if c in pq.read_schema(path).names]


def _relocate(frame: Any, columns: list[str], move: Callable[[str], str]) -> Any:
    """`frame` with each location column mapped value by value (once per distinct slide)."""
    for col in columns:
        uniques = frame[col].dropna().unique()
        frame[col] = frame[col].map({v: move(str(v)) for v in uniques})
    return frame


def portable(location: str, data_root: Path) -> str:
    """A slide location as versioned data stores it: relative to the data root when it lies under it.

    The same slides under another checkout's data root then give the same bytes, so the data
    version (the DVC hash) names the data, not the machine. URIs (s3://) and paths outside the
    root are kept as they are."""
    if "://" in location or not os.path.isabs(location):
        return location
    for root in (Path(os.path.abspath(data_root)), Path(data_root).resolve()):
        if Path(location).is_relative_to(root):
            return Path(location).relative_to(root).as_posix()
    return location


def anchored(location: str, data_root: Path) -> str:
    """The inverse of `portable` on this machine; a stored location that climbs out of the root is refused."""
    if "://" in location or os.path.isabs(location):
        return location
    if ".." in Path(location).parts:
        raise PlutoError(f"{location}: a versioned slide location leaves the data root {data_root}; refusing it")
    return str(Path(os.path.abspath(data_root)) / location)


def _write_relocated(src: Path, dest: Path, columns: list[str], move: Callable[[str], str]) -> None:
    import pandas as pd

    frame = _relocate(pd.read_parquet(src), columns, move)
    write_with(dest, lambda tmp: frame.to_parquet(tmp, index=False))


def snapshot(work_dir: Path, data_root: Path | None = None) -> Path:
    """Rebuild `work_dir/data/` from the current tables (atomically: tmp dir, then rename): hard links
    of the stage tables, the catalog without its run-time columns, and (with `data_root`) the tables
    that name slide locations rewritten with `portable` ones."""
    import pandas as pd

    work_dir = Path(work_dir).resolve()
    catalog = work_dir / "catalog.parquet"
    if not catalog.is_file():
        raise PlutoError(f"{catalog}: no catalog to version; run ingest first")
    dest = work_dir / SNAPSHOT
    tmp = work_dir / f".{SNAPSHOT}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    df = pd.read_parquet(catalog)
    df = df.drop(columns=[c for c in VOLATILE_COLUMNS if c in df.columns])
    if data_root is not None:
        df = _relocate(df, _located(catalog), lambda v: portable(v, data_root))
    df.to_parquet(tmp / "catalog.parquet", index=False)
    for src in _versioned_files(work_dir):
        columns = _located(src) if data_root is not None else []
        if columns:
            _write_relocated(src, tmp / src.relative_to(work_dir), columns, lambda v: portable(v, data_root))
        else:
            _link(src, tmp / src.relative_to(work_dir))
    old = work_dir / f".{SNAPSHOT}.old"
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def _link(src: Path, dest: Path) -> None:
    """Make `dest` a hard link of `src` (a copy where the filesystem has none), replacing it atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and os.path.samefile(src, dest):
        return
    tmp = dest.with_name(f".{dest.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # another filesystem, or none with hard links
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


@contextmanager
def _repo(work_dir: Path) -> Iterator[Any]:
    from dvc.repo import Repo

    repo = Repo(str(Path(work_dir).resolve()))
    try:
        yield repo
    finally:
        repo.close()


def init_repo(work_dir: Path, remote_url: str, endpoint_url: str | None = None) -> None:
    """Make `work_dir` a DVC repo (no SCM) whose default remote is `remote_url`; idempotent."""
    from dvc.repo import Repo

    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    if not (work_dir / ".dvc").is_dir():
        Repo.init(str(work_dir), no_scm=True).close()
    with _repo(work_dir) as repo:
        with repo.config.edit("repo") as conf:
            conf["core"]["remote"] = REMOTE_NAME
            conf["core"]["autostage"] = False
            conf["cache"]["type"] = CACHE_TYPE
            conf["remote"][REMOTE_NAME] = {"url": _dvc_url(remote_url)}
        with repo.config.edit("local") as conf:
            if endpoint_url:
                conf["remote"][REMOTE_NAME] = {"endpointurl": endpoint_url}
            else:
                conf["remote"].pop(REMOTE_NAME, None)


def _dvc_url(remote_url: str) -> str:
    """DVC names a local remote by its path; the settings use file:// URIs like the checkpoint store."""
    return remote_url.removeprefix("file://") if remote_url.startswith("file://") else remote_url


def read_version(work_dir: Path) -> DataVersion:
    """The data version `work_dir/data.dvc` points at."""
    dvc_file = Path(work_dir) / f"{SNAPSHOT}.dvc"
    if not dvc_file.is_file():
        raise PlutoError(f"{dvc_file}: no data version recorded; run the data stages first")
    out = yaml.safe_load(dvc_file.read_text())["outs"][0]
    return DataVersion(
        md5=out["md5"], nfiles=int(out.get("nfiles", 0)), bytes=int(out.get("size", 0)), remote=_remote_url(work_dir)
    )


def _remote_url(work_dir: Path) -> str:
    with _repo(work_dir) as repo:
        return repo.config["remote"][REMOTE_NAME]["url"]


def commit_data(work_dir: Path, remote_url: str, endpoint_url: str | None = None, push: bool = True,
                data_root: Path | None = None) -> DataVersion:
    """Snapshot the tables, `dvc add` them and (by default) `dvc push` them; return the version.

    `data_root` (`paths.data_root`): slide locations under it are versioned relative to it."""
    work_dir = Path(work_dir).resolve()
    init_repo(work_dir, remote_url, endpoint_url)
    snapshot(work_dir, data_root)
    with _repo(work_dir) as repo:
        repo.add(str(work_dir / SNAPSHOT))
        if push:
            repo.push()
    link_tables(work_dir, data_root=data_root)  # a table whose bytes the cache already held is still a file of its own
    version = read_version(work_dir)
    log.info("data version %s (%d files, %d bytes) -> %s", version.md5, version.nfiles, version.bytes, remote_url)
    return version


def link_tables(work_dir: Path, catalog: bool = False, data_root: Path | None = None) -> None:
    """Point the stage locations (qc/, tiles/; catalog.parquet too with `catalog`, as a restore does)
    at the tracked files in `data/`.

    With `data_root`, a table that names slide locations is versioned in its portable form, so the
    stage keeps its own file; a restore writes it with this machine's locations (`anchored`)."""
    work_dir = Path(work_dir).resolve()
    src_root = work_dir / SNAPSHOT
    for src in sorted(p for p in src_root.rglob("*") if p.is_file()):
        rel = src.relative_to(src_root)
        if not catalog and rel == Path("catalog.parquet"):
            continue
        columns = _located(src) if data_root is not None else []
        if not columns:
            _link(src, work_dir / rel)
        elif catalog:
            _write_relocated(src, work_dir / rel, columns, lambda v: anchored(v, data_root))


def dvc_file_md5(dvc_file: Path) -> str:
    """The data version a `data.dvc` names, checked: one output, the tracked folder `data`, a DVC directory hash."""
    try:
        outs = yaml.safe_load(Path(dvc_file).read_text())["outs"]
        out = outs[0] if len(outs) == 1 else {}
    except (OSError, yaml.YAMLError, KeyError, TypeError, IndexError) as exc:
        raise PlutoError(f"{dvc_file}: not a DVC file ({type(exc).__name__}: {exc})") from exc
    md5 = str(out.get("md5", ""))
    if out.get("path") != SNAPSHOT or not re.fullmatch(r"[0-9a-f]{32}\.dir", md5):  # it names cache/remote paths
        raise PlutoError(f"{dvc_file}: not a DVC data version (one output `{SNAPSHOT}` with a 32-hex directory md5); "
                         "refusing to check it out")
    return md5


def checkout_data(work_dir: Path, dvc_file: Path, remote_url: str, endpoint_url: str | None = None,
                  md5: str | None = None, data_root: Path | None = None) -> DataVersion:
    """Restore the data version `dvc_file` names from the remote into `work_dir` (a fresh dir works).

    `dvc_file` is a `data.dvc` as DVC wrote it (the retrain logs it on its run), restored unchanged;
    no pointer is ever made up from an md5. `md5`: the version a model records; a file naming other
    data is refused. `data_root`: where this machine keeps the slides the version names relative to it.
    """
    recorded = dvc_file_md5(dvc_file)
    if md5 is not None and recorded != (md5 if md5.endswith(".dir") else f"{md5}.dir"):
        raise PlutoError(f"{dvc_file}: names data {recorded}, but the model version records {md5}; refusing to mix them")
    work_dir = Path(work_dir).resolve()
    init_repo(work_dir, remote_url, endpoint_url)
    write_with(work_dir / f"{SNAPSHOT}.dvc", lambda tmp: shutil.copyfile(dvc_file, tmp))
    from dvc.exceptions import DvcException

    with _repo(work_dir) as repo:
        try:
            repo.pull(force=True)
        except DvcException as exc:
            raise PlutoError(f"data version {recorded}: the DVC remote {remote_url} does not have it ({type(exc).__name__}: {exc}); "
                             "was it pushed to another remote, or the store removed?") from exc
    link_tables(work_dir, catalog=True, data_root=data_root)
    log.info("data version %s restored into %s", recorded, work_dir)
    return read_version(work_dir)


def publish(project: Path, dvc_file: Path, remote_url: str, endpoint_url: str | None = None,
            cache_dir: Path | None = None) -> DataVersion:
    """Point the DVC project's top-level `data.dvc` at the version `dvc_file` names, and pull it into `<project>/data`.

    The project (the repository root, `chain.dvc_project`) commits `.dvc/config` and `data.dvc`; the
    remote URL of this machine, and `cache_dir` (the work dir's DVC cache, shared so the tables are
    linked, not copied again), go to `.dvc/config.local` (git-ignored), so publishing never edits a
    committed config. `data.dvc` then names the champion's data: `git diff data.dvc` shows the change,
    and `dvc pull` in a clone restores it wherever the remote is reachable.
    """
    project = Path(project).resolve()
    if not (project / ".dvc" / "config").is_file():
        raise PlutoError(f"{project}: not a DVC project (no .dvc/config); set chain.dvc_project to the repository root")
    md5 = dvc_file_md5(dvc_file)
    with _repo(project) as repo:
        with repo.config.edit("local") as conf:
            conf["remote"][REMOTE_NAME] = {"url": _dvc_url(remote_url), **({"endpointurl": endpoint_url} if endpoint_url else {})}
            if cache_dir is not None:
                conf["cache"]["dir"] = str(Path(cache_dir).resolve())
    target = project / f"{SNAPSHOT}.dvc"
    previous = target.read_bytes() if target.is_file() else None
    write_with(target, lambda tmp: shutil.copyfile(dvc_file, tmp))
    from dvc.exceptions import DvcException

    with _repo(project) as repo:
        try:
            repo.pull(force=True)
        except DvcException as exc:
            if previous is not None:  # the project keeps naming the data it had
                write_with(target, lambda tmp: Path(tmp).write_bytes(previous))
            raise PlutoError(f"{dvc_file}: the DVC remote {remote_url} lacks its data ({exc}); {target} unchanged") from exc
    out = yaml.safe_load(target.read_text())["outs"][0]
    log.info("DVC project %s: data.dvc -> %s", project, md5)
    return DataVersion(md5, int(out.get("nfiles", 0)), int(out.get("size", 0)), remote_url)
