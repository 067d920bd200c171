"""Slide fan-out: per-slide keys and store folders, merged into one atomic result; stage code versions."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pluto.errors import PlutoError
from pluto.code_version import code_version, stage_sources
from pluto.fanout import merge_qc, merge_tiles, ok_slides, prune_store, slide_key


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


def test_ok_slides_in_id_order_and_keys_depend_on_the_slide_alone(tmp_path):
    cat = pd.DataFrame({"slide_id": ["c", "a", "b", "d"], "status": ["ok", "ok", "quarantined: no_mpp", "ok"],
                        "stain": ["HE", "HE", "HE", None], "path": ["/c", "/a", "/b", "/d"]})
    cat.to_parquet(tmp_path / "catalog.parquet")
    recs = ok_slides(tmp_path / "catalog.parquet")
    assert [r["slide_id"] for r in recs] == ["a", "c", "d"]
    keys = [slide_key(r, ("slide_id", "stain")) for r in recs]
    assert [k.split("-")[0] for k in keys] == ["a", "c", "d"] and len(set(keys)) == 3
    assert slide_key(recs[2], ("slide_id", "stain")) == slide_key({**recs[2], "stain": float("nan")}, ("slide_id", "stain"))
    assert slide_key({**recs[0], "path": "/moved"}, ("slide_id", "stain")) == keys[0]  # a field the stage does not read
    assert slide_key({**recs[0], "stain": "IHC"}, ("slide_id", "stain")) != keys[0]
    assert slide_key(recs[0], ("slide_id", "stain"), "config-b") != keys[0]


def test_code_version_covers_the_stage_packages_only():
    qc = {p.relative_to(p.parents[1]).as_posix() for p in stage_sources("pluto.qc.run")}
    tiling = {p.parent.name for p in stage_sources("pluto.tiling.cohort")}
    assert {"qc/run.py", "qc/slide_qc.py", "slides/reader.py", "pluto/errors.py"} <= qc  # reads pixels through pluto.slides
    assert {"tiling", "qc", "slides"} <= tiling  # pluto.qc through its lazy exports (load_qc)
    assert not {"pluto/config.py", "pluto/cli.py"} & qc and not {"registry", "train", "eval"} & tiling
    assert code_version("pluto.qc.run") != code_version("pluto.tiling.cohort")


def test_code_version_changes_with_the_stage_source(tmp_path, monkeypatch):
    import shutil

    import pluto.code_version as cv

    copy = tmp_path / "pluto"
    shutil.copytree(cv.ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cv, "ROOT", copy)
    cv.code_version.cache_clear()
    before = {e: cv.code_version(e) for e in ("pluto.qc.run", "pluto.tiling.cohort")}
    (copy / "registry" / "promotion.py").write_text("# unrelated edit\n", encoding="utf-8")
    cv.code_version.cache_clear()
    assert {e: cv.code_version(e) for e in before} == before
    with (copy / "qc" / "tissue.py").open("a") as fh:
        fh.write("\n# a QC fix\n")
    cv.code_version.cache_clear()
    after = {e: cv.code_version(e) for e in before}
    cv.code_version.cache_clear()
    assert after["pluto.qc.run"] != before["pluto.qc.run"] and after["pluto.tiling.cohort"] != before["pluto.tiling.cohort"]


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


def test_merge_names_slides_whose_region_ids_would_overlap(tmp_path, monkeypatch, caplog):
    import pluto.tiling.cohort as cohort

    store = tmp_path / "store"
    parts = [_tile_batch(store, "k1", "a", 3), _tile_batch(store, "k2", "b", 2)]
    merge_tiles(parts, tmp_path / "tiles")
    assert "share region ids" not in caplog.text  # distinct slide ids, distinct bases
    monkeypatch.setattr(cohort, "region_base", lambda slide_id: 0)  # as if 43 bits of both ids' hashes agreed
    merge_tiles(parts, tmp_path / "tiles")
    assert "slides a, b share region ids" in caplog.text
