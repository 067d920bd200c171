"""WebDataset tar export of manifest tiles and the round trip through read_webdataset."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest

from pluto.errors import PlutoError
from pluto.tiling import TileDataset, export_webdataset, read_webdataset


def test_png_round_trip_is_pixel_exact(loader_manifest, tmp_path):
    m = loader_manifest.iloc[:7]
    shards = export_webdataset(m, tmp_path / "wds", shard_size=3)
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    with tarfile.open(shards[0]) as tar:
        assert tar.getnames() == [f"tile{i:010d}.{ext}" for i in range(3) for ext in ("png", "json")]
    ds = TileDataset(m)
    got = list(read_webdataset(shards))
    assert len(got) == 7
    for i, (tile, meta) in enumerate(got):
        assert meta["row"] == i and meta["slide_id"] == m.iloc[i].slide_id
        assert (meta["x_l0"], meta["y_l0"], meta["mpp"]) == (m.iloc[i].x_l0, m.iloc[i].y_l0, m.iloc[i].mpp)
        assert np.array_equal(tile, ds[i][0])
    assert not list((tmp_path / "wds").glob("*.tmp"))


def test_jpeg_export_is_close(loader_manifest, tmp_path):
    m = loader_manifest.iloc[:4]
    tiles = [t for t, _ in read_webdataset(export_webdataset(m, tmp_path, shard_size=10, image_format="jpg"))]
    ds = TileDataset(m)
    for i, t in enumerate(tiles):
        assert t.shape == (16, 16, 3) and np.abs(t.astype(int) - ds[i][0].astype(int)).mean() < 8


def test_bad_format_and_incomplete_shard_are_reported(loader_manifest, tmp_path):
    with pytest.raises(PlutoError, match="image_format"):
        export_webdataset(loader_manifest, tmp_path, image_format="bmp")
    shard = export_webdataset(loader_manifest.iloc[:1], tmp_path, shard_size=1)[0]
    cut = tmp_path / "cut.tar"
    with tarfile.open(shard) as src, tarfile.open(cut, "w") as dst:
        member = src.getmember("tile0000000000.png")
        dst.addfile(member, src.extractfile(member))
    with pytest.raises(PlutoError, match="incomplete samples"):
        list(read_webdataset([cut]))
