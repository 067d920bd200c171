"""tile_cohort on real slides (CMU svs, one level; a 3-level pyramid with level ratio 3) after the
real ingest and QC: grid and sampling modes, manifest files, atomic publishing, reads."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pluto.cli import app
from pluto.qc import load_qc
from pluto.qc.filters import tile_scores
from pluto.slides import TileSpec, plan_read, read_tile, slide_info
from pluto.tiling import TileDataset, read_manifest, read_spec, read_summary, tile_cohort
from pluto.tiling.geometry import boxes, plan_spec

MPPS = (0.25, 0.5, 1.0, 2.0)


def _tile(work, out, **kw):
    return tile_cohort(work / "catalog.parquet", work / "qc", out, **kw)


@pytest.fixture(scope="module")
def grid(work_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("grid") / "tiles"
    summary = _tile(work_dir, out, mpps=MPPS, tile_pxs=(275, 550), mode="grid", shard_rows=10)
    return out, summary


@pytest.fixture(scope="module")
def sample(work_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sample") / "tiles"
    summary = _tile(work_dir, out, mpps=MPPS, tile_pxs=(275, 550), mode="sample", regions_per_slide=12, seed=3)
    return out, summary


def test_grid_skips_upsampling_and_records_the_reason(grid, catalog):
    out, summary = grid
    fine = summary[summary["mpp"] == 0.25]
    assert len(fine) == 2 * len(catalog) and set(fine["reason"]) == {"upsample"}
    assert (fine["n_tiles"] == 0).all() and fine["detail"].str.contains("refusing to upsample").all()
    m = read_manifest(out)
    assert {0.5, 1.0} <= set(m["mpp"]) <= {0.5, 1.0, 2.0}  # 2.0 um/px tiles of these small slides may all fail the pixel filters
    assert set(m["slide_id"]) == set(catalog["slide_id"])
    assert (read_summary(out)["reason"] == summary["reason"]).all()
    per_spec = m.groupby(["slide_id", "mpp", "tile_px"]).size()
    for r in summary[summary["n_tiles"] > 0].itertuples():
        assert per_spec[(r.slide_id, r.mpp, r.tile_px)] == r.n_tiles


def test_grid_tiles_are_inside_on_the_level_grid_and_pass_qc(grid, work_dir):
    m = read_manifest(grid[0])
    for (slide_id, path, mpp, tile_px), rows in m.groupby(["slide_id", "path", "mpp", "tile_px"]):
        info = slide_info(path)
        plan = plan_spec(info, TileSpec(mpp, tile_px))
        fp = plan.footprint_l0
        assert fp >= tile_px * mpp / info.mpp
        for r in rows.itertuples():
            req = plan_read(info, r.x_l0, r.y_l0, r.mpp, r.tile_px)
            assert (req.level, req.read_px) == (r.level, r.read_px)  # what the loader will read
            assert 0 <= r.x_l0 and r.x_l0 + fp <= info.width and 0 <= r.y_l0 and r.y_l0 + fp <= info.height
            step = r.read_px * info.level_downsamples[r.level]
            assert r.x_l0 % step == 0 and r.y_l0 % step == 0  # on the read level's grid, no overlap
        scores = load_qc(work_dir / "qc", slide_id).score_boxes(boxes(rows[["x_l0", "y_l0"]].to_numpy(), plan))
        np.testing.assert_allclose(scores["tissue_frac"], rows["tissue_frac"], atol=1e-6)
        assert (rows["tissue_frac"] >= 0.4).all() and (rows["pen_frac"] <= 0.1).all()
        assert not scores["cell_reason"].isin(["pen", "fold", "bubble"]).any()
        # blur and HSV are the tile's own: its pixels, read as the loader reads them, pass Midnight's rules
        own = tile_scores(np.stack([read_tile(path, r.x_l0, r.y_l0, r.mpp, r.tile_px) for r in rows.itertuples()]))
        for col in ("hsv_frac", "fg_frac", "blur_var"):
            np.testing.assert_allclose(rows[col], own[col], rtol=1e-5, err_msg=col)
        assert (own["hsv_frac"] >= 0.6).all() and (own["fg_frac"] >= 0.4).all() and (own["blur_var"] >= 100).all()


def test_pixel_filters_reject_tiles_the_qc_cells_let_through(grid, work_dir, tmp_path):
    """Midnight's filters on each tile's own pixels: a tile the QC cells' verdict kept is dropped only when its own pixels fail."""
    _, summary = grid
    loose_summary = _tile(work_dir, tmp_path / "loose", mpps=(0.5, 1.0), tile_pxs=(275,), pixel_filters=False)
    loose, strict = read_manifest(tmp_path / "loose"), read_manifest(grid[0])
    assert loose["hsv_frac"].isna().all() and not strict["hsv_frac"].isna().any()
    key = ["slide_id", "mpp", "tile_px", "x_l0", "y_l0"]
    strict = strict[strict["tile_px"] == 275].merge(loose[key], on=key)
    assert len(strict) < len(loose)  # the QC cells' verdict let through tiles that fail on their own pixels
    dropped = loose.merge(strict[key], on=key, how="left", indicator=True).query("_merge == 'left_only'")
    own = tile_scores(np.stack([read_tile(r.path, r.x_l0, r.y_l0, r.mpp, r.tile_px) for r in dropped.itertuples()]))
    assert ((own["hsv_frac"] < 0.6) | (own["fg_frac"] < 0.4) | (own["blur_var"] < 100)).all()
    per_spec = summary.set_index(["slide_id", "mpp", "tile_px"])
    for (slide_id, mpp), rows in dropped.groupby(["slide_id", "mpp"]):
        assert per_spec.loc[(slide_id, mpp, 275), "n_pixel_rejected"] >= len(rows)  # also counts tiles a QC cell vetoed
    assert (loose_summary["n_pixel_rejected"] == 0).all()


def test_pyramid_with_odd_level_ratio_reads_coarse_levels(work_dir, cmu_svs, tmp_path):
    _tile(work_dir, tmp_path / "coarse", mpps=(2.0,), tile_pxs=(275,), pixel_filters=False)  # the small slides' 2 um/px
    m = read_manifest(tmp_path / "coarse")  # tiles mostly fail Midnight's HSV rule; this test is about the reads
    pyr = m[m["path"].str.endswith(".tiff")]  # the pyramid written by the fixture
    coarse = pyr[pyr["mpp"] == 2.0]
    assert len(coarse) and (coarse["level"] == 1).all()  # level 1 = 3 x 0.499 um/px
    ds = TileDataset(coarse)
    for i, r in enumerate(coarse.itertuples()):
        tile, _ = ds[i]
        assert tile.shape == (r.tile_px, r.tile_px, 3)
        # the pyramid was written from the CMU slide's pixels: same level-0 frame
        reference = read_tile(cmu_svs, r.x_l0, r.y_l0, r.mpp, r.tile_px)
        assert np.abs(tile.astype(int) - reference.astype(int)).mean() < 6  # JPEG pyramid vs svs


def test_dataset_tiles_match_direct_reads(grid):
    m = read_manifest(grid[0])
    ds = TileDataset(grid[0])
    assert len(ds) == len(m)
    for i in np.linspace(0, len(m) - 1, 6).astype(int):
        tile, idx = ds[i]
        r = m.iloc[i]
        assert idx == i and tile.shape == (r.tile_px, r.tile_px, 3) and tile.dtype == np.uint8
        assert np.array_equal(tile, read_tile(r.path, int(r.x_l0), int(r.y_l0), float(r.mpp), int(r.tile_px)))


def test_manifest_is_sharded_and_spec_records_inputs(grid, work_dir, tmp_path):
    out, _ = grid
    m = read_manifest(out)
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) == -(-len(m) // 10) and all(len(pd.read_parquet(p)) <= 10 for p in parts)
    spec = read_spec(out)
    assert spec["mode"] == "grid" and spec["n_rows"] == len(m)
    assert {(s["mpp"], s["tile_px"]) for s in spec["specs"]} == {(a, b) for a in MPPS for b in (275, 550)}
    assert spec["settings"]["min_tissue"] == 0.4 and len(spec["catalog_sha256"]) == 64
    again = tmp_path / "tiles"
    _tile(work_dir, again, mpps=MPPS, tile_pxs=(275, 550), mode="grid", shard_rows=10)
    assert read_spec(again)["manifest_sha256"] == spec["manifest_sha256"]
    assert read_spec(again)["qc_sha256"] == spec["qc_sha256"]


def test_sampling_budget_shared_centres_and_one_size_per_region(sample, work_dir):
    out, summary = sample
    m = read_manifest(out)
    assert len(m) <= 2 * 12 * len(MPPS)
    for (slide_id, path), rows in m.groupby(["slide_id", "path"]):
        info = slide_info(path)
        assert rows["region_id"].nunique() <= 12
        for _, reg in rows.groupby("region_id"):
            assert reg["tile_px"].nunique() == 1 and reg["mpp"].is_unique  # one tile per resolution
            ds = np.array([info.level_downsamples[lv] for lv in reg["level"]])
            fp = reg["read_px"].to_numpy() * ds
            cx, cy = reg["x_l0"] + fp / 2, reg["y_l0"] + fp / 2
            assert np.ptp(cx) <= ds.max() + 1 and np.ptp(cy) <= ds.max() + 1
    assert m.groupby("region_id")["slide_id"].nunique().max() == 1  # region ids are cohort-unique
    assert m["slide_id"].nunique() == 2
    per_slide = m.groupby("slide_id")["region_id"].nunique()
    assert (per_slide >= 4).all()  # centres on usable tissue: a third of the regions keep a tile past the pixel filters
    assert (m["mpp"] >= 0.5).all()


def test_region_ids_derive_from_the_slide_id_whatever_else_is_tiled(sample, work_dir, catalog, tmp_path):
    """Tiling one slide alone (as a fan-out task does) gives the ids it has in the cohort: the slide's base + 0..n-1."""
    from pluto.tiling.cohort import REGION_LOCAL_BITS, region_base

    m = read_manifest(sample[0])
    last = catalog.sort_values("slide_id").iloc[[-1]]
    last.to_parquet(tmp_path / "one.parquet")
    tile_cohort(tmp_path / "one.parquet", work_dir / "qc", tmp_path / "alone", mpps=MPPS, tile_pxs=(275, 550),
                mode="sample", regions_per_slide=12, seed=3)
    alone = read_manifest(tmp_path / "alone")
    sid = last["slide_id"].iloc[0]
    in_cohort = m[m["slide_id"] == sid].reset_index(drop=True)
    assert len(alone) and alone["region_id"].tolist() == in_cohort["region_id"].tolist()
    for slide_id, rows in m.groupby("slide_id"):
        assert (rows["region_id"].to_numpy() >> REGION_LOCAL_BITS == region_base(slide_id) >> REGION_LOCAL_BITS).all()
        assert rows["region_id"].min() >= region_base(slide_id)


def test_sampling_is_reproducible_with_a_seed(sample, work_dir, tmp_path):
    out, _ = sample
    same = tmp_path / "same"
    _tile(work_dir, same, mpps=MPPS, tile_pxs=(275, 550), mode="sample", regions_per_slide=12, seed=3)
    pd.testing.assert_frame_equal(read_manifest(same), read_manifest(out))
    other = tmp_path / "other"
    _tile(work_dir, other, mpps=MPPS, tile_pxs=(275, 550), mode="sample", regions_per_slide=12, seed=4)
    assert read_spec(other)["manifest_sha256"] != read_spec(out)["manifest_sha256"]


def test_failed_run_leaves_previous_manifest_intact(grid, work_dir, tmp_path):
    out = tmp_path / "tiles"
    shutil.copytree(grid[0], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupt(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _tile(work_dir, out, mpps=(1.0,), tile_pxs=(275,), on_progress=interrupt)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["tiles"]  # staging dir removed


def test_slides_without_tiles_or_qc_are_flagged(work_dir, catalog, tmp_path):
    qc = tmp_path / "qc"
    shutil.copytree(work_dir / "qc", qc)
    dropped = catalog["slide_id"].iloc[0]
    shutil.rmtree(qc / dropped)
    summary = tile_cohort(work_dir / "catalog.parquet", qc, tmp_path / "tiles", mpps=(2.0,), tile_pxs=(550,))
    status = summary.set_index("slide_id")["slide_status"]
    assert status[dropped] == "flagged: no_qc"
    kept = catalog["slide_id"].iloc[1]
    assert status[kept] == "flagged: no_tiles"  # one 1.1 mm tile does not fit the small tissue
    assert read_manifest(tmp_path / "tiles").empty and read_spec(tmp_path / "tiles")["n_shards"] == 0


def test_cli_tile_writes_work_tiles(work_dir, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(work_dir / "catalog.parquet", work / "catalog.parquet")
    shutil.copytree(work_dir / "qc", work / "qc")
    res = CliRunner().invoke(app, ["tile", "--work", str(work), "--mpp", "1.0", "--tile-px", "275", "--mode", "sample",
                                   "--regions-per-slide", "5"])
    assert res.exit_code == 0, res.output
    spec = json.loads((work / "tiles" / "spec.json").read_text())
    assert spec["mode"] == "sample" and spec["specs"] == [{"mpp": 1.0, "tile_px": 275}]
    assert "1 um/px x 275 px" in res.output and len(read_manifest(work / "tiles")) == spec["n_rows"] > 0
