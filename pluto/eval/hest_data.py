"""A local HEST-Benchmark copy (Jaume et al. 2024, `bench_data/<task>/`): patches, expression, patient folds.

Layout per task: `splits/{train,test}_<k>.csv` (columns sample_id, patches_path, expr_path; paths
relative to the task folder; one test patient per fold), `var_50genes.json` (the benchmark's 50
genes), `patches/<sample>.h5` (datasets `img` uint8 N x 224 x 224 x 3 at 0.5 um/px, `barcode`) and
`adata/<sample>.h5ad` (AnnData: raw counts `X`, spot barcodes in `obs`, gene names in `var`).
Read with h5py (AnnData's on-disk format: `X` dense or CSR group; `obs`/`var` index named by the
group's `_index` attribute), so no anndata dependency.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pluto.eval.labeled import DatasetLayoutError, inside, require


@dataclass(frozen=True)
class HestTask:
    """One HEST-Benchmark task (e.g. IDC): patient-level folds and the benchmark's 50 genes."""

    name: str
    root: Path
    folds: tuple[tuple[Path, Path], ...]  # (train csv, test csv) per fold
    genes: tuple[str, ...]


def load_hest_task(root: Path) -> HestTask:
    """Check the task folder's layout: fold csv pairs and the gene list."""
    root = Path(root)
    require(root, "splits", "var_50genes.json")
    folds = []
    for tr in sorted((root / "splits").glob("train_*.csv")):
        te = tr.with_name(tr.name.replace("train_", "test_"))
        if not te.is_file():
            raise DatasetLayoutError(f"{tr}: matching {te.name} missing")
        folds.append((tr, te))
    if not folds:
        raise DatasetLayoutError(f"{root / 'splits'}: no train_<k>.csv / test_<k>.csv fold files")
    genes = json.loads((root / "var_50genes.json").read_text())
    genes = genes["genes"] if isinstance(genes, dict) else genes
    return HestTask(root.name, root, tuple(folds), tuple(genes))


def _text(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).reshape(-1)]


def _index(group) -> list[str]:
    return _text(group[group.attrs.get("_index", "_index")][()])


def read_expression(path: Path, genes: tuple[str, ...]) -> tuple[list[str], np.ndarray]:
    """(spot barcodes, counts float64 spots x genes in `genes` order) from an .h5ad file."""
    import h5py

    with h5py.File(path, "r") as f:
        barcodes, var = _index(f["obs"]), _index(f["var"])
        missing = [g for g in genes if g not in var]
        if missing:
            raise DatasetLayoutError(f"{path}: gene(s) {missing[:5]} of the task's gene list not in var ({len(missing)} missing)")
        cols = [var.index(g) for g in genes]
        x = f["X"]
        if isinstance(x, h5py.Dataset):
            dense = np.asarray(x[()], dtype=np.float64)[:, cols]
        else:  # CSR group: data, indices, indptr (+ attrs shape)
            encoding = x.attrs.get("encoding-type", "csr_matrix")
            if encoding != "csr_matrix":  # CSC would read its row indices as gene columns
                raise DatasetLayoutError(f"{path}: X is stored as {encoding!r}; only dense or csr_matrix X is read")
            data, indices, indptr = (np.asarray(x[k][()]) for k in ("data", "indices", "indptr"))
            dense = np.zeros((len(barcodes), len(cols)), np.float64)
            where = {c: j for j, c in enumerate(cols)}
            rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
            keep = np.isin(indices, cols)
            dense[rows[keep], [where[c] for c in indices[keep]]] = data[keep]
    return barcodes, dense


def read_patches(path: Path) -> tuple[list[str], np.ndarray]:
    """(barcodes, uint8 patches N x H x W x 3) from a HEST patches .h5 file."""
    import h5py

    with h5py.File(path, "r") as f:
        if "img" not in f or "barcode" not in f:
            raise DatasetLayoutError(f"{path}: HEST patch file needs datasets 'img' and 'barcode', has {sorted(f)}")
        return _text(f["barcode"][()]), np.asarray(f["img"][()], dtype=np.uint8)


def read_sample(task: HestTask, patches_rel: str, expr_rel: str) -> tuple[np.ndarray, np.ndarray]:
    """Patches and counts of one sample, aligned on barcodes (spots without a patch are dropped)."""
    patches_path, expr_path = inside(task.root, patches_rel), inside(task.root, expr_rel)
    for p in (patches_path, expr_path):
        if not p.is_file():
            raise DatasetLayoutError(f"{task.root}: listed file {p} missing")
    patch_codes, images = read_patches(patches_path)
    spot_codes, counts = read_expression(expr_path, task.genes)
    row = {b: i for i, b in enumerate(spot_codes)}
    have = [i for i, b in enumerate(patch_codes) if b in row]
    if not have:
        raise DatasetLayoutError(f"{patches_path}: no patch barcode matches a spot of {expr_path.name}")
    return images[have], counts[[row[patch_codes[i]] for i in have]]


def fold_samples(csv_path: Path) -> list[tuple[str, str, str]]:
    """(sample_id, patches_path, expr_path) rows of one fold file."""
    with Path(csv_path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"sample_id", "patches_path", "expr_path"}
    if not rows or not need <= set(rows[0]):
        raise DatasetLayoutError(f"{csv_path}: needs rows with columns {sorted(need)}")
    return [(r["sample_id"], r["patches_path"], r["expr_path"]) for r in rows]
