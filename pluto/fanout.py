"""Split a cohort into slide batches and merge the per-batch outputs back atomically.

The data plane fans out over slide batches: one ingest, QC or tiling call per batch, on Dask
workers. Ingest batches are slices of the file listing; each file's record is its output
(`pluto.slides.ingest_file`) and `pluto.slides.ingest.write_catalog` merges them.
Each batch writes into its own folder of a content-addressed store (`<store>/<key>/`, the key
hashing the batch's input tables and the stage config), so workers never write the same file and
an unchanged batch is found again on the next run (the flow's cache). The merge then builds the
cohort outputs in a temporary folder from hard links (no copy of the bytes), writes the cohort
tables once and swaps the result in by rename: a failed fan-out leaves the previous version
intact, and unchanged batches give byte-identical merged tables (the same data version).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from pluto.errors import PlutoError

if TYPE_CHECKING:
    from pluto.slides.ingest_sources import SlideSource

log = logging.getLogger(__name__)

QC_SUMMARY = "qc_summary.parquet"
TILING_SUMMARY = "tiling_summary.parquet"
TILE_SPEC = "spec.json"


def split_catalog(catalog_path: Path, batch_slides: int, out_dir: Path) -> list[Path]:
    """Write `out_dir/batch-<i>.parquet`, each with at most `batch_slides` ok slides (by slide_id).

    Quarantined slides need no QC or tiling and are in no batch.
    """
    catalog = pd.read_parquet(catalog_path)
    ok = catalog[catalog["status"] == "ok"].sort_values("slide_id", kind="stable").reset_index(drop=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    paths = []
    for i, start in enumerate(range(0, len(ok), batch_slides)):
        path = Path(out_dir) / f"batch-{i:05d}.parquet"
        ok.iloc[start : start + batch_slides].to_parquet(path, index=False)
        paths.append(path)
    log.info("fan-out: %d ok slides of %d in %d batch(es) of <= %d", len(ok), len(catalog), len(paths), batch_slides)
    return paths


def split_sources(sources: list[SlideSource], batch_slides: int, out_dir: Path) -> list[Path]:
    """Write `out_dir/batch-<i>.json`, each with at most `batch_slides` listed files, in listing order."""
    from pluto.slides.ingest_sources import save_sources

    shutil.rmtree(out_dir, ignore_errors=True)
    paths = [
        save_sources(Path(out_dir) / f"batch-{i:05d}.json", sources[start : start + batch_slides])
        for i, start in enumerate(range(0, len(sources), batch_slides))
    ]
    log.info("fan-out: %d listed files in %d ingest batch(es) of <= %d", len(sources), len(paths), batch_slides)
    return paths


def _swap_in(tmp: Path, dest: Path) -> None:
    """Replace `dest` (file or folder) by `tmp` with renames only."""
    old = dest.with_name(f".{dest.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def merge_qc(batch_dirs: list[Path], qc_dir: Path) -> pd.DataFrame:
    """Link each batch's `<slide_id>/` folders into a new `qc_dir`, with the merged QC summary."""
    if not batch_dirs:
        raise PlutoError(f"{qc_dir}: no QC batches to merge")
    tmp = _fresh(qc_dir.with_name(f".{qc_dir.name}.tmp"))
    for batch in batch_dirs:
        for slide_dir in sorted(p for p in batch.iterdir() if p.is_dir()):
            shutil.copytree(slide_dir, tmp / slide_dir.name, copy_function=os.link)
    summaries = [pd.read_parquet(b / QC_SUMMARY) for b in batch_dirs]
    summary = pd.concat(summaries, ignore_index=True).sort_values("slide_id", kind="stable").reset_index(drop=True)
    summary.to_parquet(tmp / QC_SUMMARY, index=False)
    _swap_in(tmp, qc_dir)
    log.info("fan-out: QC of %d slide(s) from %d batch(es) -> %s", len(summary), len(batch_dirs), qc_dir)
    return summary


SPEC_SAME = ("mode", "settings", "specs")  # must agree across batches
SPEC_SUM = ("n_rows", "n_shards", "n_slides")
SPEC_HASHES = ("catalog_sha256", "qc_sha256", "manifest_sha256")


def merge_specs(specs: list[dict], where: Path) -> dict:
    """One tiling spec for the merged manifest: counts summed, each content hash replaced by the
    sha256 of the batches' hashes in batch order (batches are ordered by slide_id)."""
    first = specs[0]
    for other in specs[1:]:
        bad = [k for k in SPEC_SAME if other.get(k) != first.get(k)]
        if bad:
            raise PlutoError(f"{where}: tiling batches disagree on {', '.join(bad)}")
    merged = {k: v for k, v in first.items() if k not in SPEC_SUM + SPEC_HASHES}
    merged.update({k: sum(int(s.get(k, 0)) for s in specs) for k in SPEC_SUM})
    for k in SPEC_HASHES:
        merged[k] = hashlib.sha256("".join(s.get(k, "") for s in specs).encode()).hexdigest()
    merged["n_batches"] = len(specs)
    return merged


def merge_tiles(batch_dirs: list[Path], tiles_dir: Path) -> pd.DataFrame:
    """Renumber every batch's manifest shards into a new `tiles_dir` (links), with one spec and summary."""
    if not batch_dirs:
        raise PlutoError(f"{tiles_dir}: no tiling batches to merge")
    spec = merge_specs([json.loads((b / TILE_SPEC).read_text()) for b in batch_dirs], tiles_dir)
    tmp = _fresh(tiles_dir.with_name(f".{tiles_dir.name}.tmp"))
    shards = [shard for b in batch_dirs for shard in sorted(b.glob("part-*.parquet"))]
    for n, shard in enumerate(shards):
        os.link(shard, tmp / f"part-{n:05d}.parquet")
    (tmp / TILE_SPEC).write_text(json.dumps(spec, indent=2, sort_keys=True))
    summary = pd.concat([pd.read_parquet(b / TILING_SUMMARY) for b in batch_dirs], ignore_index=True)
    summary.to_parquet(tmp / TILING_SUMMARY, index=False)
    _swap_in(tmp, tiles_dir)
    log.info("fan-out: %d manifest shard(s) from %d batch(es) -> %s", len(shards), len(batch_dirs), tiles_dir)
    return summary


def prune_store(store: Path, keep: list[Path]) -> None:
    """Delete batch outputs of earlier runs that the current outputs no longer use."""
    keep_names = {Path(k).name for k in keep}
    for entry in sorted(store.iterdir()) if store.is_dir() else []:
        if entry.name not in keep_names:
            shutil.rmtree(entry, ignore_errors=True)
