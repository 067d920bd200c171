"""Decoded-tile cache: same pixels as uncached reads, bounded bytes, per handle cleanup, fork and thread safety."""

from __future__ import annotations

import hashlib
import os
import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile

from pluto.slides import clear_tile_cache, configure_tile_cache, open_slide, read_tile, tile_cache
from pluto.slides.decoded_tiles import DEFAULT_MAX_MIB

GRID = [(x, y) for y in range(0, 1600, 224) for x in range(0, 1600, 224)]  # row-major, 224-px steps


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_tile_cache()
    yield
    configure_tile_cache(DEFAULT_MAX_MIB)
    clear_tile_cache()


def _grid_tiles(path: Path, mpp: float = 0.25) -> list[np.ndarray]:
    with open_slide(path) as h:
        return [read_tile(h, x, y, mpp, 224) for x, y in GRID]


@pytest.mark.parametrize("name", ["jpeg", "odd"])
def test_cached_grid_reads_equal_uncached(pyramids: dict[str, Path], name: str) -> None:
    configure_tile_cache(0)
    uncached = _grid_tiles(pyramids[name])
    assert tile_cache().hits == 0 and len(tile_cache()) == 0
    configure_tile_cache(DEFAULT_MAX_MIB)
    clear_tile_cache()
    cached = _grid_tiles(pyramids[name])
    cache = tile_cache()
    assert all(np.array_equal(a, b) for a, b in zip(uncached, cached))
    # neighbours share tiles: fewer decodes than tiles touched
    assert cache.hits > cache.misses > 0


def test_direct_decode_matches_tifffile(pyramids: dict[str, Path], cmu_svs: Path) -> None:
    """The direct libjpeg path gives tifffile's pixels: YCbCr pyramid and Aperio's untransformed RGB JPEG."""
    for path in (pyramids["jpeg"], cmu_svs):
        with tifffile.TiffFile(path) as tif:
            expected = tif.pages[0].asarray()[..., :3]
        with open_slide(path) as h:
            assert h.direct
            got = h.read_level(0, 0, 0, h.info.width, h.info.height)
        assert np.array_equal(got, expected)


def test_budget_bounds_bytes(pyramids: dict[str, Path]) -> None:
    configure_tile_cache(1)  # 1 MiB: five 256 x 256 RGB tiles
    with open_slide(pyramids["jpeg"]) as h:
        for x, y in GRID:
            read_tile(h, x, y, 0.25, 224)
        cache = tile_cache()
        assert cache.misses > 5 and cache.nbytes == 5 * 256 * 256 * 3 and len(cache) == 5
        configure_tile_cache(0.3)  # shrinking evicts down to the new budget
        assert cache.nbytes == 256 * 256 * 3 and len(cache) == 1


def test_close_drops_entries_and_cached_tiles_are_read_only(pyramids: dict[str, Path]) -> None:
    h = open_slide(pyramids["jpeg"])
    tile = read_tile(h, 100, 100, 0.25, 224)
    again = read_tile(h, 100, 100, 0.25, 224)
    tile[:] = 0  # the caller's tile is its own array ...
    assert not np.array_equal(read_tile(h, 100, 100, 0.25, 224), tile)
    assert np.array_equal(read_tile(h, 100, 100, 0.25, 224), again)  # ... so the cache is untouched
    cached = next(iter(tile_cache()._entries.values()))
    assert not cached.flags.writeable
    other = open_slide(pyramids["odd"])
    read_tile(other, 100, 100, 0.25, 224)
    before = len(tile_cache())
    h.close()
    assert 0 < len(tile_cache()) < before  # only the closed handle's tiles are gone
    other.close()
    assert len(tile_cache()) == 0


def test_forked_child_gets_empty_cache_even_if_lock_was_held(pyramids: dict[str, Path]) -> None:
    h = open_slide(pyramids["jpeg"])
    expected = read_tile(h, 300, 500, 0.25, 224)
    parent_cache = tile_cache()
    n_parent = len(parent_cache)
    r, w = os.pipe()
    with parent_cache._lock:  # as if another parent thread were inside the cache at fork time
        pid = os.fork()
        if pid == 0:
            try:
                child_cache = tile_cache()
                before = (child_cache is parent_cache, len(child_cache))
                tile = read_tile(h, 300, 500, 0.25, 224)  # the parent's handle, inherited
                os.write(w, pickle.dumps((before, len(child_cache), hashlib.sha256(tile).hexdigest())))
            finally:
                os._exit(0)
    os.close(w)
    deadline = time.monotonic() + 60
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            pytest.fail("forked child deadlocked on the parent's cache lock")
        time.sleep(0.05)
    with os.fdopen(r, "rb") as fh:
        (same, empty_len), child_len, digest = pickle.loads(fh.read())
    assert not same and empty_len == 0 and child_len > 0
    assert digest == hashlib.sha256(expected).hexdigest()
    assert tile_cache() is parent_cache and len(parent_cache) == n_parent  # the parent's cache is unchanged
    h.close()


def test_threads_read_the_same_pixels(pyramids: dict[str, Path]) -> None:
    configure_tile_cache(0.5)  # small budget: threads evict each other's tiles constantly
    expected = _grid_tiles(pyramids["jpeg"])
    with open_slide(pyramids["jpeg"]) as h, ThreadPoolExecutor(4) as pool:
        barrier = threading.Barrier(4)

        def work(offset: int) -> list[np.ndarray]:
            barrier.wait()
            order = GRID[offset:] + GRID[:offset]
            return [read_tile(h, x, y, 0.25, 224) for x, y in order]

        results = list(pool.map(work, range(0, 32, 8)))
    for offset, tiles in zip(range(0, 32, 8), results):
        assert all(np.array_equal(t, expected[(offset + i) % len(GRID)]) for i, t in enumerate(tiles))
