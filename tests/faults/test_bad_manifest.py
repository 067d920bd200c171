"""A tile manifest naming tiles off their slide, at negative coordinates, or at a resolution the
slide cannot serve is refused when loaded (every reader: datasets, WebDataset export, the trainer's
rows) and by the GX gate, naming the offending rows; the manifest on disk is left as it was."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from pluto.errors import ValidationGateError
from pluto.qc import validate_manifest
from pluto.slides import clear_pool
from pluto.tiling import TileDataset, TileIterableDataset, export_webdataset
from pluto.tiling.manifest import SPEC_FILE, to_manifest
from pluto.train.data import open_rows

CMU_W, CMU_H = 2220, 2967  # level-0 px of the bundled Aperio slide, 0.499 um/px, one level


def manifest_rows(path: Path, tiles: list[tuple[int, int, float, int]]) -> pd.DataFrame:
    """Manifest rows (x_l0, y_l0, mpp, tile_px) on one slide, level 0 read at the native size."""
    rows = [
        {"slide_id": "cmu", "path": str(path), "level": 0, "x_l0": x, "y_l0": y, "mpp": mpp, "tile_px": px,
         "read_px": round(px * mpp / 0.499), "region_id": i, "tissue_frac": 1.0, "pen_frac": 0.0, "fold_frac": 0.0,
         "bubble_frac": 0.0, "mpp_override": float("nan")}
        for i, (x, y, mpp, px) in enumerate(tiles)
    ]  # fmt: skip
    return to_manifest(pd.DataFrame(rows))


GOOD = [(0, 0, 0.5, 64), (1000, 1200, 1.0, 64), (CMU_W - 65, CMU_H - 65, 0.5, 64)]
BAD = {
    3: ((CMU_W - 10, 0, 0.5, 64), "outside the slide's 2220x2967"),
    4: ((-5, 100, 0.5, 64), "tile at (-5, 100)"),
    5: ((0, CMU_H, 1.0, 64), f"tile at (0, {CMU_H})"),
    6: ((10**9, 10**9, 0.5, 64), f"tile at ({10**9}, {10**9})"),
    7: ((0, 0, 0.1, 64), "refusing to upsample"),
}


@pytest.fixture(autouse=True)
def _fresh_pool():
    clear_pool()
    yield
    clear_pool()


@pytest.fixture()
def bad_manifest(cmu_svs: Path) -> pd.DataFrame:
    return manifest_rows(cmu_svs, GOOD + [t for t, _ in BAD.values()])


def _assert_names_bad_rows(exc: ValidationGateError) -> None:
    assert exc.table == "manifest"
    assert [f.split(":", 1)[0] for f in exc.failures] == [f"row {i}" for i in BAD]
    for failure, (_, reason) in zip(exc.failures, BAD.values()):
        assert reason in failure and "CMU-1-Small-Region.svs" in failure


def test_good_rows_read_and_bad_rows_are_named(cmu_svs: Path, bad_manifest: pd.DataFrame, tmp_path: Path) -> None:
    good = TileDataset(manifest_rows(cmu_svs, GOOD))
    assert [good[i][0].shape for i in range(len(good))] == [(64, 64, 3)] * len(GOOD)
    loaders = {
        "TileDataset": lambda: TileDataset(bad_manifest),
        "TileIterableDataset": lambda: TileIterableDataset(bad_manifest),
        "export_webdataset": lambda: export_webdataset(bad_manifest, tmp_path / "wds"),
    }
    for name, load in loaders.items():
        with pytest.raises(ValidationGateError) as exc:
            load()
        _assert_names_bad_rows(exc.value)
    assert not (tmp_path / "wds").exists() or not any((tmp_path / "wds").iterdir())  # nothing half-exported


def test_manifest_on_disk_is_refused_and_left_intact(cmu_svs: Path, bad_manifest: pd.DataFrame, tmp_path: Path) -> None:
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    bad_manifest.to_parquet(tiles / "part-00000.parquet", index=False)
    (tiles / SPEC_FILE).write_text(json.dumps({"specs": [], "mode": "grid"}))
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tiles.iterdir()}
    with pytest.raises(ValidationGateError) as exc:
        TileDataset(tiles)
    _assert_names_bad_rows(exc.value)
    with pytest.raises(ValidationGateError):
        open_rows(str(tiles), "manifest", None)  # the trainer's reader
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tiles.iterdir()} == before


def test_many_bad_rows_are_counted_not_all_listed(cmu_svs: Path) -> None:
    with pytest.raises(ValidationGateError) as exc:
        TileDataset(manifest_rows(cmu_svs, [(CMU_W + i, 0, 0.5, 64) for i in range(25)]))
    assert len(exc.value.failures) == 11 and exc.value.failures[-1] == "... and 15 more row(s)"


def test_rows_of_a_missing_slide_are_named(cmu_svs: Path, tmp_path: Path) -> None:
    gone = tmp_path / "gone.svs"
    table = pd.concat([manifest_rows(cmu_svs, GOOD[:1]), manifest_rows(gone, GOOD[:2])], ignore_index=True)
    with pytest.raises(ValidationGateError) as exc:
        TileDataset(table)
    assert [f.split(": ", 1)[0] for f in exc.value.failures] == ["row 1", "row 2"]
    assert all(f"slide cannot be opened: {gone}" in f for f in exc.value.failures)


def test_gx_gate_refuses_negative_coordinates_and_bad_values(cmu_svs: Path) -> None:
    table = manifest_rows(cmu_svs, [(-5, 0, 0.5, 64), (0, -7, 0.01, 0)])
    with pytest.raises(ValidationGateError) as exc:
        validate_manifest(table)
    text = str(exc.value)
    assert "column='x_l0'" in text and "column='y_l0'" in text and "column='mpp'" in text and "column='tile_px'" in text
    assert "-5" in text and "-7" in text
