"""Global sample order for training: which manifest row is global sample `k`, and who reads it.

The order is a function of (n_rows, seed, k) only, never of the world size, so a run resumed
on a different number of GPUs continues the same sequence: the trainer's checkpoint stores the
global sample index and the loader starts there. Epoch `k // n_rows` uses its own pseudo-random
bijection of the rows (a keyed Feistel network with cycle walking), which needs O(1) memory, so a
640M-row manifest (PLUTO-4) never materialises a permutation array in each DataLoader worker.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

_ROUNDS = 6
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a good 64-bit avalanche on uint64 arrays (wraps mod 2**64)."""
    z = z ^ (z >> np.uint64(30))
    z = z * _MIX1
    z = z ^ (z >> np.uint64(27))
    z = z * _MIX2
    return z ^ (z >> np.uint64(31))


@lru_cache(maxsize=64)
def _round_keys(seed: int, epoch: int) -> tuple[int, ...]:
    blob = hashlib.blake2b(f"pluto-order:{seed}:{epoch}".encode(), digest_size=8 * _ROUNDS).digest()
    return tuple(int.from_bytes(blob[8 * i : 8 * i + 8], "little") for i in range(_ROUNDS))


def permute(rows: np.ndarray, n: int, seed: int, epoch: int) -> np.ndarray:
    """Map positions `rows` (ints in [0, n)) through the epoch's bijection of range(n)."""
    x = np.asarray(rows, dtype=np.uint64)
    if n <= 1:
        return x.astype(np.int64)
    half_bits = max(1, ((n - 1).bit_length() + 1) // 2)
    half_mask = np.uint64((1 << half_bits) - 1)
    shift = np.uint64(half_bits)
    keys = [np.uint64(k) for k in _round_keys(seed, epoch)]
    out = x.copy()
    todo = np.ones(out.shape, dtype=bool)
    while todo.any():  # cycle walking: re-encrypt values that land outside [0, n)
        v = out[todo]
        left, right = v >> shift, v & half_mask
        with np.errstate(over="ignore"):
            for key in keys:
                left, right = right, left ^ (_mix(right * _GOLDEN + key) & half_mask)
        out[todo] = (left << shift) | right
        todo = out >= np.uint64(n)
    return out.astype(np.int64)


@dataclass(frozen=True)
class GlobalOrder:
    """Global sample index -> manifest row: epoch-aware seeded shuffle of `n_rows` rows."""

    n_rows: int
    seed: int = 0

    def rows(self, global_indices: np.ndarray) -> np.ndarray:
        """Manifest rows of the given global sample indices (any int64 >= 0)."""
        g = np.asarray(global_indices, dtype=np.int64)
        if self.n_rows == 0:
            raise ValueError("GlobalOrder over an empty manifest")
        epochs, pos = np.divmod(g, self.n_rows)
        out = np.empty_like(g)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            out[sel] = permute(pos[sel], self.n_rows, self.seed, int(epoch))
        return out


def shard_indices(
    start_index: int,
    end_index: int | None,
    rank: int,
    world_size: int,
    worker: int = 0,
    num_workers: int = 1,
    batch_size: int = 1,
    block: int = 4096,
) -> Iterator[np.ndarray]:
    """Global sample indices one (rank, DataLoader worker) reads, in blocks, from `start_index`.

    Ranks interleave: rank r takes `start_index + r + world_size * j` for j = 0, 1, ...
    A rank's stream is cut into batches of `batch_size`, dealt round-robin to workers, which is
    the order a DataLoader (in_order=True) collects them; so after the trainer has consumed n
    batches on every rank, exactly global indices [start, start + n * batch_size * world_size)
    were used and resuming from there repeats and skips nothing. `end_index` (exclusive) None
    means an endless stream over epochs.
    """
    if not (0 <= rank < world_size and 0 <= worker < num_workers and batch_size >= 1):
        raise ValueError(f"bad shard: rank {rank}/{world_size}, worker {worker}/{num_workers}, batch {batch_size}")
    period = batch_size * num_workers  # rank-local indices per round of workers
    j0 = 0
    while True:
        j = np.arange(j0, j0 + block * period, dtype=np.int64)
        j = j[(j // batch_size) % num_workers == worker]
        g = start_index + rank + world_size * j
        if end_index is not None:
            g = g[g < end_index]
            if g.size == 0:
                return
        yield g
        j0 += block * period
