"""torch datasets over a tile manifest: pixels are read from the slides through pluto.slides.

Tiles are never stored one file each (DESIGN.md): each worker reads regions from the slides
through pluto.slides' per-process handle pool, opened lazily on first use, so the datasets are
safe to fork into DataLoader workers. Only compact column arrays of the manifest are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from pluto.tiling.bounds import check_manifest_bounds
from pluto.tiling.manifest import as_manifest
from pluto.tiling.order import GlobalOrder, shard_indices


class TileRows:
    """The columns a reader needs, as numpy arrays (shared copy-on-write after fork)."""

    def __init__(self, manifest: pd.DataFrame) -> None:
        check_manifest_bounds(manifest)  # off-slide rows or unservable mpps fail here, naming the rows
        codes, paths = pd.factorize(manifest["path"])
        self.paths: list[str] = [str(p) for p in paths]
        self.path_idx = codes.astype(np.int32)
        self.x_l0 = manifest["x_l0"].to_numpy(np.int64)
        self.y_l0 = manifest["y_l0"].to_numpy(np.int64)
        self.mpp = manifest["mpp"].to_numpy(np.float64)
        self.tile_px = manifest["tile_px"].to_numpy(np.int32)
        self.mpp_override = manifest["mpp_override"].to_numpy(np.float64)  # NaN: the header's MPP

    def __len__(self) -> int:
        return len(self.x_l0)

    def read(self, row: int) -> np.ndarray:
        """(tile_px, tile_px, 3) uint8 RGB of manifest row `row`."""
        from pluto.slides import get_handle, read_tile

        override = self.mpp_override[row]
        handle = get_handle(self.paths[self.path_idx[row]], None if np.isnan(override) else float(override))
        return read_tile(handle, int(self.x_l0[row]), int(self.y_l0[row]), float(self.mpp[row]), int(self.tile_px[row]))


class TileDataset(Dataset):
    """Map-style: item i is (tile of manifest row i, or `transform(tile)`, i)."""

    def __init__(self, manifest: pd.DataFrame | Path | str, transform: Callable[[np.ndarray], Any] | None = None) -> None:
        self.rows = TileRows(as_manifest(manifest))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        if not 0 <= i < len(self.rows):
            raise IndexError(f"tile index {i} out of range [0, {len(self.rows)})")
        tile = self.rows.read(i)
        return (self.transform(tile) if self.transform else tile), i


class TileIterableDataset(IterableDataset):
    """Endless (or up to `end_index`) stream in a global, world-size-independent order.

    Global sample k is manifest row `GlobalOrder(n_rows, seed).rows(k)` (a fresh shuffle each
    epoch). Rank r of `world_size` reads k = start_index + r + world_size * j; inside a rank,
    batches of `batch_size` (set it to the DataLoader's batch size) go round-robin to the
    DataLoader workers, matching the order the DataLoader returns them. So resuming from the
    checkpoint's global sample index (`start_index`) continues exactly, with any world size.
    Yields (tile or `transform(tile)`, manifest row).
    """

    def __init__(
        self,
        manifest: pd.DataFrame | Path | str,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        start_index: int = 0,
        transform: Callable[[np.ndarray], Any] | None = None,
        *,
        batch_size: int = 1,
        end_index: int | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if start_index < 0 or (end_index is not None and end_index < start_index):
            raise ValueError(f"bad sample range [{start_index}, {end_index})")
        self.rows = TileRows(as_manifest(manifest))
        if len(self.rows) == 0:
            raise ValueError("TileIterableDataset over an empty manifest")
        self.order = GlobalOrder(len(self.rows), seed)
        self.rank, self.world_size = rank, world_size
        self.start_index, self.end_index = start_index, end_index
        self.batch_size = batch_size
        self.transform = transform

    def row_stream(self) -> Iterator[int]:
        """Manifest rows this (rank, current DataLoader worker) yields, in order, without reading."""
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for block in shard_indices(
            self.start_index, self.end_index, self.rank, self.world_size, worker, num_workers, self.batch_size
        ):
            yield from (int(r) for r in self.order.rows(block))

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        for row in self.row_stream():
            tile = self.rows.read(row)
            yield (self.transform(tile) if self.transform else tile), row


def collate_tiles(batch: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack same-size uint8 tiles to (B, H, W, 3) and their rows to (B,) int64."""
    tiles, rows = zip(*batch)
    return torch.from_numpy(np.stack(tiles)), torch.as_tensor(rows, dtype=torch.int64)
