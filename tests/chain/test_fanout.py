"""Slide-batch fan-out: split by slide_id, merge per-batch outputs into one atomic result."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pluto.errors import PlutoError
from pluto.fanout import merge_qc, merge_tiles, prune_store, split_catalog


def _spec(n_rows, **changes):
    return {"mode": "grid", "settings": {"seed": 0}, "specs": [{"mpp": 0.5, "tile_px": 224}], "n_rows": n_rows,
            "n_shards": 1, "n_slides": 1, "catalog_sha256": "c", "qc_sha256": "q", "manifest_sha256": f"m{n_rows}", **changes}


def _tile_batch(root, name, slide, n_rows, **spec_changes):
    d = root / name
    d.mkdir(parents=True)
    pd.DataFrame({"slide_id": [slide] * n_rows, "x_l0": range(n_rows)}).to_parquet(d / "part-00000.parquet")
    pd.DataFrame({"slide_id": [slide], "n_tiles": [n_rows]}).to_parquet(d / "tiling_summary.parquet")
    (d / "spec.json").write_text(json.dumps(_spec(n_rows, **spec_changes)))
    return d


def test_split_keeps_ok_slides_in_id_order(tmp_path):
    cat = pd.DataFrame({"slide_id": ["c", "a", "b", "d"], "status": ["ok", "ok", "quarantined: no_mpp", "ok"]})
    cat.to_parquet(tmp_path / "catalog.parquet")
    batches = split_catalog(tmp_path / "catalog.parquet", 2, tmp_path / "b")
    assert [pd.read_parquet(b)["slide_id"].tolist() for b in batches] == [["a", "c"], ["d"]]


def test_merge_tiles_renumbers_shards_and_sums_counts(tmp_path):
    store = tmp_path / "store"
    b1, b2 = _tile_batch(store, "k1", "a", 3), _tile_batch(store, "k2", "b", 2)
    (tmp_path / "tiles").mkdir()
    (tmp_path / "tiles" / "stale.parquet").write_bytes(b"old")
    summary = merge_tiles([b1, b2], tmp_path / "tiles")
    tiles = tmp_path / "tiles"
    assert sorted(p.name for p in tiles.iterdir()) == ["part-00000.parquet", "part-00001.parquet", "spec.json", "tiling_summary.parquet"]
    assert pd.read_parquet(tiles / "part-00001.parquet")["slide_id"].tolist() == ["b", "b"]
    spec = json.loads((tiles / "spec.json").read_text())
    assert (spec["n_rows"], spec["n_shards"], spec["n_slides"], spec["n_batches"]) == (5, 2, 2, 2)
    assert summary["n_tiles"].tolist() == [3, 2]
    prune_store(store, [b2])
    assert [p.name for p in store.iterdir()] == ["k2"]
    assert (tiles / "part-00000.parquet").is_file()  # merged output holds its own links


def test_merge_refuses_batches_tiled_with_other_settings_and_keeps_previous(tmp_path):
    store = tmp_path / "store"
    b1 = _tile_batch(store, "k1", "a", 3)
    b2 = _tile_batch(store, "k2", "b", 2, specs=[{"mpp": 1.0, "tile_px": 224}])
    (tmp_path / "tiles").mkdir()
    (tmp_path / "tiles" / "part-00000.parquet").write_bytes(b"previous")
    with pytest.raises(PlutoError, match="disagree on specs"):
        merge_tiles([b1, b2], tmp_path / "tiles")
    assert (tmp_path / "tiles" / "part-00000.parquet").read_bytes() == b"previous"


def test_merge_qc_links_slide_folders_and_sorts_summary(tmp_path):
    batches = []
    for i, sid in enumerate(("b", "a")):
        d = tmp_path / f"batch{i}"
        (d / sid).mkdir(parents=True)
        (d / sid / "qc.parquet").write_bytes(sid.encode())
        pd.DataFrame({"slide_id": [sid], "status": ["ok"]}).to_parquet(d / "qc_summary.parquet")
        batches.append(d)
    summary = merge_qc(batches, tmp_path / "qc")
    assert summary["slide_id"].tolist() == ["a", "b"]
    assert (tmp_path / "qc" / "a" / "qc.parquet").read_bytes() == b"a"
    assert (tmp_path / "qc" / "a" / "qc.parquet").stat().st_ino == (tmp_path / "batch1" / "a" / "qc.parquet").stat().st_ino
