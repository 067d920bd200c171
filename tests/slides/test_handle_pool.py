"""Per-process LRU pool of slide handles: eviction closes, forked workers start their own pool."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from pluto.slides import configure_pool, get_handle, pool_paths, read_tile


def test_lru_eviction_closes(pyramids: dict[str, Path], cmu_svs: Path) -> None:
    configure_pool(2)
    try:
        first = get_handle(pyramids["odd"])
        get_handle(pyramids["ratio3"])
        assert get_handle(pyramids["odd"]) is first  # a hit refreshes recency
        get_handle(cmu_svs)  # evicts ratio3, the least recently used
        assert pool_paths() == [str(pyramids["odd"]), str(cmu_svs)]
        evicted = get_handle(pyramids["jpeg"])  # evicts odd ...
        assert str(pyramids["odd"]) not in pool_paths()
        with pytest.raises(Exception):  # ... and closes it: its OpenSlide object is gone
            first.openslide.level_count
        assert evicted.info.levels == 3
    finally:
        configure_pool(32)


def test_fork_child_has_own_pool(cmu_svs: Path) -> None:
    parent = get_handle(cmu_svs)
    expected = read_tile(cmu_svs, 300, 400, 0.5, 64)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: empty pool, opens its own handle, reads the same pixels
        try:
            before = pool_paths()
            tile = read_tile(cmu_svs, 300, 400, 0.5, 64)
            os.write(w, pickle.dumps((before, get_handle(cmu_svs) is parent, tile)))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        before, same_object, tile = pickle.loads(fh.read())
    os.waitpid(pid, 0)
    assert before == [] and not same_object
    assert np.array_equal(tile, expected)
    assert get_handle(cmu_svs) is parent  # the parent's handle survived the child


class _Tiles:
    def __init__(self, path: Path) -> None:
        self.path, self.xy = str(path), [(x, y) for x in range(0, 2000, 500) for y in range(0, 2800, 700)]

    def __len__(self) -> int:
        return len(self.xy)

    def __getitem__(self, i: int):
        x, y = self.xy[i]
        return read_tile(self.path, x, y, 1.0, 32), os.getpid()


def test_dataloader_workers(cmu_svs: Path) -> None:
    import torch.utils.data as tud

    get_handle(cmu_svs)  # the parent holds a handle before the workers fork
    ds = _Tiles(cmu_svs)
    loader = tud.DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="fork")
    tiles, pids = zip(*[(t, p) for batch, pid in loader for t, p in zip(batch, pid)])
    assert len(set(int(p) for p in pids)) == 2 and os.getpid() not in {int(p) for p in pids}
    for i, tile in enumerate(tiles):
        assert np.array_equal(tile.numpy(), ds[i][0])


def test_resolved_settings_size_the_handle_pool_and_tile_cache():
    from flows.common import resolve
    from pluto.slides import tile_cache
    from pluto.slides.handles import _pool

    try:
        s = resolve({"slides": {"handle_pool_size": 3, "tile_cache_mib": 1}})
        assert s.slides.handle_pool_size == 3
        assert _pool().max_handles == 3 and tile_cache().max_bytes == 2**20
    finally:
        resolve()  # back to the defaults for the rest of the session
    assert _pool().max_handles == 32 and tile_cache().max_bytes == 64 * 2**20
