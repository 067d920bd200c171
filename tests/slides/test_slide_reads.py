"""Reads at a physical resolution, checked against an area-resized level-0 reference."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from pluto.errors import PlutoError
from pluto.slides import best_level, open_slide, plan_read, read_thumbnail, read_tile, slide_info

TILE_PX = 224


def area_reference(level0: np.ndarray, x_l0: int, y_l0: int, size_l0: int, tile_px: int) -> np.ndarray:
    """The tile as it should be: the level-0 square (white outside the slide) area-resized to tile_px."""
    region = np.full((size_l0, size_l0, 3), 255, np.uint8)
    sub = level0[y_l0 : y_l0 + size_l0, x_l0 : x_l0 + size_l0]
    region[: sub.shape[0], : sub.shape[1]] = sub
    return cv2.resize(region, (tile_px, tile_px), interpolation=cv2.INTER_AREA)


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).mean())


@pytest.mark.parametrize("mpp, level", [(0.25, 0), (0.5, 1), (1.0, 2), (2.0, 3)])
@pytest.mark.parametrize("x_l0, y_l0", [(400, 800), (1000, 1200), (1992, 2740)])  # the last runs off the edge
def test_read_matches_level0_reference(pyramids: dict[str, Path], mpp: float, level: int, x_l0: int, y_l0: int) -> None:
    """Odd-sized lossless pyramid: the read equals the level-0 box reference, and not its one-pixel shift."""
    with open_slide(pyramids["odd"]) as h:
        level0 = h.read_level(0, 0, 0, h.info.width, h.info.height)
        req = plan_read(h.info, x_l0, y_l0, mpp, TILE_PX)
        assert req.level == level
        tile = read_tile(h, x_l0, y_l0, mpp, TILE_PX)
    assert tile.shape == (TILE_PX, TILE_PX, 3) and tile.dtype == np.uint8
    size_l0 = round(TILE_PX * mpp / 0.25)
    ds = 2**level
    err = _mae(tile, area_reference(level0, x_l0, y_l0, size_l0, TILE_PX))
    assert err < 0.5  # only the rounding of chained box averages
    if level > 0 and x_l0 < 1500:  # on tissue, a reader one level pixel off is measurably worse
        for dx, dy in ((ds, 0), (0, ds)):
            shifted = area_reference(level0, x_l0 + dx, y_l0 + dy, size_l0, TILE_PX)
            assert _mae(tile, shifted) > err + 1.0


def test_ratio3_pyramid_and_snapping(pyramids: dict[str, Path]) -> None:
    with open_slide(pyramids["ratio3"]) as h:
        level0 = h.read_level(0, 0, 0, h.info.width, h.info.height)
        req = plan_read(h.info, 901, 1199, 0.75, TILE_PX)  # level 1 (x3), start snapped to the level grid
        assert (req.level, req.x_lv, req.y_lv, req.read_px) == (1, 300, 400, 224)
        tile = read_tile(h, 900, 1200, 0.75, TILE_PX)
        assert _mae(tile, area_reference(level0, 900, 1200, 672, TILE_PX)) < 0.5
        between = read_tile(h, 900, 1200, 1.5, TILE_PX)  # 1.5 um/px: level 1 (0.75) read at 448 px, resized
        assert plan_read(h.info, 900, 1200, 1.5, TILE_PX).read_px == 448
        assert _mae(between, area_reference(level0, 900, 1200, 1344, TILE_PX)) < 0.5


def test_jpeg_pyramid_close_to_reference(pyramids: dict[str, Path]) -> None:
    with open_slide(pyramids["jpeg"]) as h:
        level0 = h.read_level(0, 0, 0, h.info.width, h.info.height)
        for mpp in (0.5, 1.0):
            tile = read_tile(h, 512, 1024, mpp, TILE_PX)
            ref = area_reference(level0, 512, 1024, round(TILE_PX * mpp / 0.25), TILE_PX)
            assert _mae(tile, ref) < 6.0  # JPEG q90 noise of each level


def test_direct_reads_equal_openslide_on_exact_levels(cmu_svs: Path, pyramids: dict[str, Path]) -> None:
    with open_slide(cmu_svs) as h:
        assert h.direct
        a = h.read_level(0, 100, 200, 300, 250)
        b = h.read_level_openslide(0, 100, 200, 300, 250)
        assert a.shape == (250, 300, 3) and np.array_equal(a, b)
    with open_slide(pyramids["ratio3"]) as h:  # downsample exactly 3: OpenSlide is not resampling
        assert np.array_equal(h.read_level(1, 50, 60, 200, 200), h.read_level_openslide(1, 50, 60, 200, 200))


def test_real_svs_tiles(cmu_svs: Path, cmu_rgb: np.ndarray) -> None:
    native = read_tile(cmu_svs, 600, 900, 0.499, TILE_PX)
    assert np.array_equal(native, cmu_rgb[900:1124, 600:824])
    coarse = read_tile(cmu_svs, 600, 900, 1.0, TILE_PX)  # single level: 449 px of level 0 area-resized
    assert _mae(coarse, area_reference(cmu_rgb, 600, 900, round(TILE_PX * 1.0 / 0.499), TILE_PX)) < 0.5
    edge = read_tile(cmu_svs, 2100, 2900, 0.5, TILE_PX)  # past the slide edge: white
    assert (edge[-50:, -50:] == 255).all()


def test_never_upsamples_beyond_tolerance(cmu_svs: Path, pyramids: dict[str, Path]) -> None:
    """The coarsest level not coarser than the target beyond 2% jitter; a finer target is refused."""
    for too_fine in (0.25, 0.43, 0.485):  # 0.43 on 0.499 um/px would stretch 193 px to 224
        with pytest.raises(PlutoError, match="refusing to upsample"):
            read_tile(cmu_svs, 0, 0, too_fine, TILE_PX)
    assert plan_read(slide_info(cmu_svs), 0, 0, 0.49, TILE_PX).read_px == 220  # 1.8% jitter: accepted
    assert read_tile(cmu_svs, 0, 0, 0.49, TILE_PX).shape == (TILE_PX, TILE_PX, 3)
    with open_slide(pyramids["odd"]) as h:  # levels at 0.25, 0.5, 1.0, 2.0 um/px
        assert best_level(h.info, 0.5) == 1
        assert best_level(h.info, 0.56) == 1
        assert best_level(h.info, 0.9) == 1  # 1.0 um/px is 11% coarser: a finer level serves it
        assert best_level(h.info, 0.97) == 1  # 3% coarser: still not within jitter
        assert best_level(h.info, 0.985) == 2  # 1.5%: jitter
        assert best_level(h.info, 0.246) == 0
        with pytest.raises(PlutoError):
            best_level(h.info, 0.24)


def test_thumbnail(cmu_svs: Path, pyramids: dict[str, Path]) -> None:
    thumb, ds = read_thumbnail(cmu_svs, 8.0)
    assert thumb.shape == (185, 138, 3)
    assert ds == pytest.approx(2220 / 138)
    thumb, ds = read_thumbnail(pyramids["odd"], 2.0)  # served by level 3 without resizing
    assert thumb.shape == (371, 277, 3) or thumb.shape == (371, 278, 3)
    assert ds == pytest.approx(8.0, rel=0.01)


@pytest.mark.parametrize("w, h", [(555, 740), (370, 493), (138, 185)])  # ratio 4 exactly, ~6, ~16
def test_block_reduced_level_matches_one_whole_level_resize(tmp_path: Path, cmu_rgb: np.ndarray, w: int, h: int) -> None:
    """Thumbnails are built from 256-px blocks (many here: level 0 is 2220 x 2960); the result is one
    area resize of the whole level: equal for an integer ratio, close otherwise."""
    from pluto.slides import write_pyramid
    from pluto.slides.reader import reduce_level

    level0 = np.ascontiguousarray(cmu_rgb[:2960])
    whole = cv2.resize(level0, (w, h), interpolation=cv2.INTER_AREA)
    with open_slide(write_pyramid(tmp_path / "one.tiff", level0, 0.25, 1, compression="zlib")) as handle:
        blocks = reduce_level(handle, 0, w, h, block_px=256)
    assert blocks.shape == whole.shape
    if w == 555:
        assert np.array_equal(blocks, whole)
    assert _mae(blocks, whole) < 1.0  # detail inside a box of a quarter output px is treated as uniform
