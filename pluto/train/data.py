"""Training input: tiles in the global sample order, multi-cropped in DataLoader workers.

Order and sharding are pluto.tiling's (`TileIterableDataset`: global sample index k -> manifest
row, rank r reads k = start + r + world_size * j, batches dealt round-robin to workers). This
module adds what exact resumption needs on top: every sample's augmentation draws from a
generator seeded by (seed, k) and every micro-batch's iBOT masks from (seed, first k), so the
batch after a resume (same world size) is bit-identical to the one an uninterrupted run would
have seen, independent of worker count or worker RNG. An image folder (files PIL reads, square
or centre-cropped) can stand in for a manifest in tests and demos.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pluto.errors import ConfigError
from pluto.ssl.config import SSLConfig
from pluto.ssl.multicrop import MultiCropAugment, collate_multicrop
from pluto.tiling.order import GlobalOrder, shard_indices

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class ImageRows:
    """Image files as tile rows: `read(i)` gives a square uint8 RGB array (centre-cropped)."""

    def __init__(self, folder: Path, mpp: float | None) -> None:
        root = Path(folder)
        self.paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise ConfigError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) to train on")
        self.mpp = np.full(len(self.paths), np.nan if mpp is None else float(mpp))

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, row: int) -> np.ndarray:
        from PIL import Image

        with Image.open(self.paths[row]) as im:
            rgb = np.asarray(im.convert("RGB"))
        h, w = rgb.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        return np.ascontiguousarray(rgb[top : top + side, left : left + side])


@dataclass(frozen=True)
class StreamPosition:
    """Where one rank's stream starts: the shared global index plus this rank's place in the world."""

    start_index: int
    rank: int
    world_size: int
    batch_size: int


class MultiCropStream(IterableDataset):
    """Yields (multi-crop dict, global sample index k) for one rank, forever, from `start_index`."""

    def __init__(self, rows: Any, seed: int, ssl: SSLConfig, pos: StreamPosition) -> None:
        self.rows, self.seed, self.pos = rows, seed, pos
        self.order = GlobalOrder(len(rows), seed)
        self.augment = MultiCropAugment(ssl)

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], int]]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        p = self.pos
        for block in shard_indices(p.start_index, None, p.rank, p.world_size, worker, n_workers, p.batch_size):
            for k, row in zip(block.tolist(), self.order.rows(block).tolist()):
                gen = torch.Generator().manual_seed(sample_seed(self.seed, k))
                mpp = float(self.rows.mpp[row])
                yield self.augment(self.rows.read(row), mpp=None if np.isnan(mpp) else mpp, generator=gen), k


def sample_seed(seed: int, k: int) -> int:
    """A 63-bit seed for global sample k (distinct per (seed, k), stable across processes)."""
    return int(np.random.SeedSequence([int(seed), int(k)]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class MultiCropCollate:
    """collate_multicrop with masks drawn from (seed, first sample index); adds `index` (B,) int64."""

    def __init__(self, ssl: SSLConfig, seed: int) -> None:
        self.ssl, self.seed = ssl, seed

    def __call__(self, samples: list[tuple[dict[str, torch.Tensor], int]]) -> dict[str, torch.Tensor]:
        crops, ks = zip(*samples)
        batch = collate_multicrop(list(crops), self.ssl, rng=np.random.default_rng([self.seed, ks[0]]))
        batch["index"] = torch.tensor(ks, dtype=torch.int64)
        return batch


def open_rows(data: str, data_kind: str, image_mpp: float | None) -> Any:
    """Manifest rows (pluto.tiling) or image-folder rows, both with `read(row)`, `mpp` and `len`."""
    if data_kind == "images":
        return ImageRows(Path(data), image_mpp)
    from pluto.tiling.dataset import TileRows
    from pluto.tiling.manifest import as_manifest

    return TileRows(as_manifest(Path(data)))


def make_loader(rows: Any, ssl: SSLConfig, seed: int, pos: StreamPosition, *, num_workers: int, prefetch_factor: int, pin_memory: bool) -> DataLoader:
    """DataLoader doing the multi-crop on CPU workers (pinned memory, prefetch, persistent workers)."""
    return DataLoader(
        MultiCropStream(rows, seed, ssl, pos),
        batch_size=pos.batch_size,
        num_workers=num_workers,
        collate_fn=MultiCropCollate(ssl, seed),
        pin_memory=pin_memory,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
    )
