"""A process-wide, byte-bounded LRU cache of decoded slide tiles (shared by every open handle).

Reads are JPEG-decode bound: a 224-px read at a random position touches ~3.5 of a slide's 256-px
tiles. Reads in grid order (tiling, embedding, export) share tiles with their neighbours, left and
right within a row and above and below between rows; keeping the decoded tiles of the last two
tile rows of a 40k-px-wide slide takes ~60 MiB, hence the default budget. One budget per process,
not per handle, so a pool of many handles cannot multiply it. Cached arrays are read-only and never
recycled, so a caller (or another thread) holding one never sees it change. A training loader that
reads random tiles across thousands of slides gains nothing from it (measured: ~3.5 decodes per
native 224-px tile either way) and may set the budget to 0 in each worker (`configure_tile_cache`).

Fork safety: the cache belongs to one process. A forked child (DataLoader worker) sees a new pid and
starts an empty cache with a fresh lock, never touching a lock a parent thread might have held.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import OrderedDict
from typing import Hashable

import numpy as np

DEFAULT_MAX_MIB = 64

_owners = itertools.count(1)


def new_owner() -> int:
    """A token naming one reader's entries; never reused within a process (unlike `id()`)."""
    return next(_owners)


class TileCache:
    """LRU of read-only decoded tiles keyed by (owner, level, index), at most `max_bytes` in total."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.hits = self.misses = 0  # lookups since creation (diagnostics: decodes = misses)
        self.pid = os.getpid()
        self._entries: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[int, int, int]) -> np.ndarray | None:
        with self._lock:
            tile = self._entries.get(key)
            if tile is None:
                self.misses += 1
            else:
                self.hits += 1
                self._entries.move_to_end(key)
            return tile

    def put(self, key: tuple[int, int, int], tile: np.ndarray) -> np.ndarray:
        """Store `tile` (made read-only) and return it; tiles larger than the budget are not kept."""
        tile.flags.writeable = False
        if tile.nbytes > self.max_bytes:
            return tile
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.nbytes -= old.nbytes
            self._entries[key] = tile
            self.nbytes += tile.nbytes
            self._evict()
        return tile

    def drop(self, owner: Hashable) -> None:
        """Forget every entry of `owner` (its reader closed)."""
        with self._lock:
            for key in [k for k in self._entries if k[0] == owner]:
                self.nbytes -= self._entries.pop(key).nbytes

    def clear(self) -> None:
        """Forget every entry and reset the hit/miss counters."""
        with self._lock:
            self._entries.clear()
            self.nbytes = self.hits = self.misses = 0

    def resize(self, max_bytes: int) -> None:
        with self._lock:
            self.max_bytes = max_bytes
            self._evict()

    def _evict(self) -> None:
        while self.nbytes > self.max_bytes and self._entries:
            self.nbytes -= self._entries.popitem(last=False)[1].nbytes


_CACHE = TileCache(DEFAULT_MAX_MIB * 2**20)


def tile_cache() -> TileCache:
    """This process's cache (a forked child gets a new, empty one of the same budget)."""
    global _CACHE
    if _CACHE.pid != os.getpid():
        _CACHE = TileCache(_CACHE.max_bytes)
    return _CACHE


def configure_tile_cache(max_mib: float) -> None:
    """Set this process's decoded-tile budget in MiB (0 disables caching); evicts the excess."""
    if max_mib < 0:
        raise ValueError(f"max_mib must be >= 0, got {max_mib}")
    tile_cache().resize(int(max_mib * 2**20))


def clear_tile_cache() -> None:
    """Empty this process's decoded-tile cache (the budget stays)."""
    tile_cache().clear()
