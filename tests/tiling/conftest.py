"""Tiling fixtures: a real work dir (ingest + QC of the CMU slide and a 3-level pyramid with odd
level ratio 3 written from its pixels) and small manifests for loader-order tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pluto.slides import TileSpec, slide_info
from pluto.tiling.geometry import grid_origins, plan_spec
from pluto.tiling.manifest import to_manifest

PYRAMID_NAME = "cmu-pyramid-r3.tiff"


@pytest.fixture(scope="session")
def work_dir(tmp_path_factory, cmu_svs: Path) -> Path:
    """`work/` after the real `pluto.slides.ingest` and `pluto.qc.run_qc` on two slides."""
    from pluto.qc import run_qc
    from pluto.slides import get_handle, ingest, read_tile, write_pyramid

    root = tmp_path_factory.mktemp("tiling")
    slides = root / "slides"
    slides.mkdir()
    shutil.copy(cmu_svs, slides / cmu_svs.name)
    info = get_handle(cmu_svs).info
    level0 = read_tile(cmu_svs, 0, 0, info.mpp, min(info.width, info.height))  # square crop, level 0
    level0 = level0[:, : level0.shape[1] - 1]  # odd, non-square level 0: 2220 x 2219
    write_pyramid(slides / PYRAMID_NAME, level0, mpp=info.mpp, n_levels=3, level_ratio=3, tile_px=256)
    work = root / "work"
    ingest(str(slides), work, workers=1)
    run_qc(work / "catalog.parquet", work / "qc")
    return work


@pytest.fixture(scope="session")
def catalog(work_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(work_dir / "catalog.parquet")


def small_manifest(path: Path, mpp: float = 2.0, tile_px: int = 16) -> pd.DataFrame:
    """Every grid tile of one spec on a real slide, without QC: for loader tests only."""
    info = slide_info(path)
    plan = plan_spec(info, TileSpec(mpp, tile_px))
    xy = grid_origins(info, plan)
    n = len(xy)
    df = pd.DataFrame({
        "slide_id": ["s"] * n, "path": [str(path)] * n, "level": plan.level, "x_l0": xy[:, 0], "y_l0": xy[:, 1],
        "mpp": mpp, "tile_px": tile_px, "read_px": plan.read_px, "region_id": np.arange(n),
        "tissue_frac": 1.0, "pen_frac": 0.0, "fold_frac": 0.0, "bubble_frac": 0.0, "mpp_override": np.nan,
    })
    return to_manifest(df)


@pytest.fixture(scope="session")
def loader_manifest(cmu_svs: Path) -> pd.DataFrame:
    """30 tiny tiles of the CMU slide (2.0 um/px, 16 px)."""
    return small_manifest(cmu_svs).iloc[:30].reset_index(drop=True)
