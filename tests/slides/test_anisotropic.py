"""A slide whose pixels are not square (0.25 x 0.5 um/px): tiles and QC cells are square in um.

The slide is the bundled tissue taken as 0.25 um/px on both axes (the truth), with its rows
box-averaged in pairs (0.5 um/px down), written by tifffile as a 2-level pyramid whose TIFF
resolution tags differ per axis. A tile read from it must equal the truth area-resized, which it
cannot when mpp_x and mpp_y are averaged (0.375 um/px: 1.5x too wide across, 0.75x too tall).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from pluto.errors import PlutoError
from pluto.slides import TileSpec, open_slide, plan_read, read_tile
from pluto.tiling.geometry import SKIP_UPSAMPLE, boxes, grid_origins, plan_spec

MPP_X, MPP_Y = 0.25, 0.5


@pytest.fixture(scope="module")
def truth(cmu_rgb: np.ndarray) -> np.ndarray:
    """Square-pixel tissue at 0.25 um/px, 2220 x 2960."""
    return np.ascontiguousarray(cmu_rgb[:2960])


@pytest.fixture(scope="module")
def anisotropic(tmp_path_factory, truth: np.ndarray) -> Path:
    import tifffile

    h, w = truth.shape[:2]
    level0 = cv2.resize(truth, (w, h // 2), interpolation=cv2.INTER_AREA)  # rows in pairs: 0.25 x 0.5 um/px
    level1 = cv2.resize(level0, (w // 2, h // 4), interpolation=cv2.INTER_AREA)
    path = tmp_path_factory.mktemp("aniso") / "aniso.tiff"
    with tifffile.TiffWriter(path) as tif:
        for k, level in enumerate((level0, level1)):
            tif.write(level, tile=(256, 256), photometric="rgb", compression="zlib", metadata=None, subfiletype=1 if k else 0,
                      resolution=(1e4 / (MPP_X * 2**k), 1e4 / (MPP_Y * 2**k)), resolutionunit="CENTIMETER")
    return path


def test_metadata_keeps_both_axes(anisotropic: Path) -> None:
    with open_slide(anisotropic) as h:
        assert (h.info.mpp_x, h.info.mpp_y) == (pytest.approx(MPP_X), pytest.approx(MPP_Y))
        assert h.info.mpp == pytest.approx(MPP_Y)  # the coarser axis bounds what can be served


@pytest.mark.parametrize("mpp, tile_px", [(0.5, 224), (1.0, 128), (2.0, 100)])
def test_tiles_are_square_in_um(anisotropic: Path, truth: np.ndarray, mpp: float, tile_px: int) -> None:
    with open_slide(anisotropic) as h:
        req = plan_read(h.info, 600, 300, mpp, tile_px)
        ds = h.info.level_downsamples[req.level]
        # both axes cover tile_px * mpp um: twice as many px across as down
        assert req.read_w * ds * MPP_X == pytest.approx(tile_px * mpp, rel=0.01)
        assert req.read_h * ds * MPP_Y == pytest.approx(tile_px * mpp, rel=0.01)
        assert req.level == (0 if mpp == 0.5 else 1)  # level 1 is 1.0 um/px down: it serves 1.0, not 0.5
        tile = read_tile(h, 600, 300, mpp, tile_px)
    assert tile.shape == (tile_px, tile_px, 3)
    edge = int(round(tile_px * mpp / MPP_X))  # truth px (0.25 um) per tile edge
    want = cv2.resize(truth[600 : 600 + edge, 600 : 600 + edge], (tile_px, tile_px), interpolation=cv2.INTER_AREA)
    assert float(np.abs(tile.astype(float) - want).mean()) < 1.5


def test_coarser_axis_that_would_upsample_is_refused(anisotropic: Path) -> None:
    """0.3 um/px is finer than the rows (0.5) although coarser than the columns (0.25): refused and recorded."""
    with open_slide(anisotropic) as h:
        with pytest.raises(PlutoError, match=r"0.25 x 0.5 um/px .*refusing to upsample"):
            plan_read(h.info, 0, 0, 0.3, 224)
        skipped = plan_spec(h.info, TileSpec(0.3, 224))
        assert skipped[0] == SKIP_UPSAMPLE
        assert plan_read(h.info, 0, 0, 0.505, 224).level == 0  # within the 2% jitter of the coarser axis


def test_tiling_grid_is_square_in_um(anisotropic: Path) -> None:
    with open_slide(anisotropic) as h:
        info = h.info
        plan = plan_spec(info, TileSpec(0.5, 224))
        assert (plan.read_w, plan.read_h, plan.footprint_w, plan.footprint_h) == (448, 224, 448, 224)
        origins = grid_origins(info, plan)
        assert len(origins) == (2220 // 448) * (1480 // 224)
        b = boxes(origins, plan)
        assert (b[:, 2] * MPP_X == 112).all() and (b[:, 3] * MPP_Y == 112).all()
        assert (b[:, 0] + b[:, 2] <= info.width).all() and (b[:, 1] + b[:, 3] <= info.height).all()


def test_qc_cells_are_square_in_um(anisotropic: Path, tmp_path: Path) -> None:
    from pluto.qc import QCParams
    from pluto.qc.detectors import load_detector
    from pluto.qc.run import qc_slide

    params = QCParams(thumb_mpp=4.0)
    row = qc_slide("aniso", str(anisotropic), "H&E", tmp_path, params, load_detector(params.detector))
    import pandas as pd

    cells = pd.read_parquet(tmp_path / "aniso" / "qc.parquet")
    full = cells[(cells["w_l0"] == cells["w_l0"].max()) & (cells["h_l0"] == cells["h_l0"].max())]
    assert (full["w_l0"] * MPP_X == 128).all() and (full["h_l0"] * MPP_Y == 128).all()
    assert row["downsample"] == pytest.approx(4.0 / MPP_Y, rel=0.01)  # thumb_mpp reached on the coarser axis
    assert row["n_tissue_cells"] > 0 and cells["blur_var"].notna().sum() == row["n_tissue_cells"]
