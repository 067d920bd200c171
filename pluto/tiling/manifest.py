"""Tile manifest on disk: sharded parquet, spec.json, tiling_summary.parquet, atomic publishing.

Layout (CONTRACTS.md): `tiles/part-%05d.parquet` (at most `shard_rows` rows each),
`tiles/spec.json`, `tiles/tiling_summary.parquet`. Tiles are coordinates, never pixels: the
loader reads them from the slides. A run writes into a hidden sibling directory and swaps it in
only after every shard passed the manifest gate, so a failed run leaves the previous manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from pluto.errors import PlutoError

MANIFEST_DTYPES: dict[str, str] = {
    "slide_id": "object",
    "path": "object",
    "level": "int32",
    "x_l0": "int64",
    "y_l0": "int64",
    "mpp": "float64",
    "tile_px": "int32",
    "read_px": "int32",
    "region_id": "int64",
    "tissue_frac": "float32",
    "pen_frac": "float32",
    "fold_frac": "float32",
    "bubble_frac": "float32",
    "hsv_frac": "float32",  # the tile's own pixels (pluto.tiling.pixels); NaN when pixel filters were off
    "fg_frac": "float32",
    "blur_var": "float32",
    "mpp_override": "float64",  # the catalog's MPP override of the slide (NaN: header MPP)
}
MANIFEST_COLUMNS = tuple(MANIFEST_DTYPES)
SCORE_COLUMNS = ("hsv_frac", "fg_frac", "blur_var")  # absent (NaN) in manifests written without pixel filters
SHARD_GLOB = "part-*.parquet"
SPEC_FILE = "spec.json"
SUMMARY_FILE = "tiling_summary.parquet"


def empty_manifest() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in MANIFEST_DTYPES.items()})


def to_manifest(rows: pd.DataFrame) -> pd.DataFrame:
    """`rows` with the manifest's dtypes; pixel scores a manifest predating them (or built by hand) lacks are NaN."""
    return rows.assign(**{c: float("nan") for c in SCORE_COLUMNS if c not in rows.columns}).astype(MANIFEST_DTYPES)


LOCATION_COLUMNS = ("uri", "path")  # where a slide lies on this machine, not what it is: content hashes leave them out


def table_hash(df: pd.DataFrame, *, drop: tuple[str, ...] = ()) -> str:
    """Content hash of a table (column names + values, row order as given), hex sha256."""
    kept = df.drop(columns=[c for c in drop if c in df.columns])
    h = hashlib.sha256(json.dumps(list(map(str, kept.columns))).encode())
    h.update(pd.util.hash_pandas_object(kept, index=False).to_numpy().tobytes())
    return h.hexdigest()


class ShardWriter:
    """Buffers manifest rows and writes full shards of `shard_rows`, each through `gate` first.

    Keeps memory bounded by one shard whatever the cohort size; the running hash covers every
    row written, in order, and names the manifest's content in spec.json.
    """

    def __init__(self, out_dir: Path, shard_rows: int, gate: Callable[[pd.DataFrame], object]) -> None:
        if shard_rows < 1:
            raise PlutoError(f"{out_dir}: shard_rows must be >= 1, got {shard_rows}")
        self.out_dir = out_dir
        self.shard_rows = shard_rows
        self.gate = gate
        self.n_rows = 0
        self.n_shards = 0
        self._buffer: list[pd.DataFrame] = []
        self._buffered = 0
        self._hash = hashlib.sha256()

    def add(self, rows: pd.DataFrame) -> None:
        if rows.empty:
            return
        self._buffer.append(rows.loc[:, list(MANIFEST_COLUMNS)].astype(MANIFEST_DTYPES))
        self._buffered += len(rows)
        while self._buffered >= self.shard_rows:
            self._flush(self.shard_rows)

    def close(self) -> str:
        """Write the last partial shard; return the manifest content hash."""
        if self._buffered:
            self._flush(self._buffered)
        return self._hash.hexdigest()

    def _flush(self, n: int) -> None:
        data = pd.concat(self._buffer, ignore_index=True)
        shard, rest = data.iloc[:n].reset_index(drop=True), data.iloc[n:]
        self.gate(shard)
        shard.to_parquet(self.out_dir / f"part-{self.n_shards:05d}.parquet", index=False)
        self._hash.update(table_hash(shard, drop=LOCATION_COLUMNS).encode())
        self.n_shards += 1
        self.n_rows += len(shard)
        self._buffer = [rest] if len(rest) else []
        self._buffered = len(rest)


def staging_dir(out_dir: Path) -> Path:
    """A fresh hidden sibling of `out_dir` (same filesystem, so the final rename is atomic)."""
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir(parents=True)
    return tmp


def publish(tmp_dir: Path, out_dir: Path) -> Path:
    """Swap the finished `tmp_dir` in as `out_dir`; the old version is kept until the swap is done."""
    for f in tmp_dir.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:12]}"
        os.replace(out_dir, old)
    os.replace(tmp_dir, out_dir)
    if old is not None:
        shutil.rmtree(old)
    return out_dir


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def shard_paths(manifest_dir: Path) -> list[Path]:
    return sorted(Path(manifest_dir).glob(SHARD_GLOB))


def read_manifest(manifest_dir: Path | str) -> pd.DataFrame:
    """All shards of a manifest directory in shard order (row i = global manifest row i)."""
    manifest_dir = Path(manifest_dir)
    if not (manifest_dir / SPEC_FILE).is_file():
        raise PlutoError(f"{manifest_dir}: not a tile manifest ({SPEC_FILE} missing)")
    parts = shard_paths(manifest_dir)
    if not parts:
        return empty_manifest()
    return to_manifest(pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True))


def read_spec(manifest_dir: Path | str) -> dict:
    return json.loads((Path(manifest_dir) / SPEC_FILE).read_text())


def read_summary(manifest_dir: Path | str) -> pd.DataFrame:
    return pd.read_parquet(Path(manifest_dir) / SUMMARY_FILE)


def as_manifest(manifest: pd.DataFrame | Path | str) -> pd.DataFrame:
    """Accept a manifest DataFrame or its directory."""
    if isinstance(manifest, pd.DataFrame):
        missing = set(MANIFEST_COLUMNS) - set(manifest.columns) - set(SCORE_COLUMNS)
        if missing:
            raise PlutoError(f"manifest table lacks columns {sorted(missing)}")
        return manifest.reset_index(drop=True)
    return read_manifest(manifest)

