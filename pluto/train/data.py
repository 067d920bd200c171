"""Training input: tiles in the global sample order, multi-cropped in DataLoader workers.

Order and sharding are pluto.tiling's (`TileIterableDataset`: global sample index k -> manifest
row, rank r reads k = start + r + world_size * j, batches dealt round-robin to workers). This
module adds what exact resumption needs on top: every sample's augmentation draws from a
generator seeded by (seed, k) and every micro-batch's iBOT masks from (seed, first k), so the
batch after a resume (same world size) is bit-identical to the one an uninterrupted run would
have seen, independent of worker count or worker RNG. An image folder (files PIL reads, square
or centre-cropped) can stand in for a manifest in tests and demos.

`augment_on="device"` moves the multi-crop off the CPU: workers only read tiles and draw each
sample's augmentation plan (same generator, same draws), and ship uint8 tiles plus plans;
`to_device` renders the micro-batch on the training device with the same `MultiCropAugment`
code. Either way a sample's crops follow from (seed, k) alone.
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
from pluto.train.config import AUGMENT_ON
from pluto.ssl.multicrop import MultiCropAugment, collate_multicrop, plan_outputs, tile_tensor
from pluto.ssl.step_loop import batch_to
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
    """Yields (sample, global sample index k) for one rank, forever, from `start_index`.

    The sample is the multi-crop dict (augment_on="cpu") or {"tile": uint8 (3, H, W), "plan": ...}
    (augment_on="device"), drawn from the same per-sample generator.
    """

    def __init__(self, rows: Any, seed: int, ssl: SSLConfig, pos: StreamPosition, augment_on: str = "cpu") -> None:
        if augment_on not in AUGMENT_ON:
            raise ConfigError(f"augment_on={augment_on!r}: expected one of {AUGMENT_ON}")
        self.rows, self.seed, self.pos, self.augment_on = rows, seed, pos, augment_on
        self.order = GlobalOrder(len(rows), seed)
        self.augment = MultiCropAugment(ssl)

    def __iter__(self) -> Iterator[tuple[dict[str, Any], int]]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        p = self.pos
        for block in shard_indices(p.start_index, None, p.rank, p.world_size, worker, n_workers, p.batch_size):
            for k, row in zip(block.tolist(), self.order.rows(block).tolist()):
                gen = torch.Generator().manual_seed(sample_seed(self.seed, k))
                mpp = float(self.rows.mpp[row])
                mpp = None if np.isnan(mpp) else mpp
                if self.augment_on == "cpu":
                    yield self.augment(self.rows.read(row), mpp=mpp, generator=gen), k
                else:
                    tile = tile_tensor(self.rows.read(row))
                    yield {"tile": tile, "plan": self.augment.plan(tile.shape[-1], mpp, gen)}, k


def sample_seed(seed: int, k: int) -> int:
    """A 63-bit seed for global sample k (distinct per (seed, k), stable across processes)."""
    return int(np.random.SeedSequence([int(seed), int(k)]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class MultiCropCollate:
    """collate_multicrop with masks drawn from (seed, first sample index); adds `index` (B,) int64.

    Device-side augmentation: the crops are left out and `tiles` / `plans` (lists) come instead.
    """

    def __init__(self, ssl: SSLConfig, seed: int) -> None:
        self.ssl, self.seed = ssl, seed

    def __call__(self, samples: list[tuple[dict[str, Any], int]]) -> dict[str, Any]:
        items, ks = zip(*samples)
        rng = np.random.default_rng([self.seed, ks[0]])
        if "plan" in items[0]:
            batch: dict[str, Any] = collate_multicrop([plan_outputs(s["plan"]) for s in items], self.ssl, rng=rng,
                                                      n_images=len(items) * self.ssl.n_global_crops)
            batch["tiles"] = [s["tile"] for s in items]
            batch["plans"] = [s["plan"] for s in items]
        else:
            batch = collate_multicrop(list(items), self.ssl, rng=rng)
        batch["index"] = torch.tensor(ks, dtype=torch.int64)
        return batch


def to_device(batch: dict[str, Any], device: torch.device | str, augment: MultiCropAugment | None = None) -> dict[str, torch.Tensor]:
    """A collated batch on `device`; with `tiles`/`plans` (device-side augmentation) the crops are rendered there."""
    if "tiles" not in batch:
        return batch_to(batch, device)
    if augment is None:
        raise ConfigError("this batch carries uint8 tiles for device-side augmentation; pass the MultiCropAugment")
    tiles = [t.to(device, non_blocking=True) for t in batch["tiles"]]
    crops = augment.render(tiles, batch["plans"])
    rest = batch_to({k: v for k, v in batch.items() if k not in ("tiles", "plans")}, device)
    return {**rest, **crops}


def open_rows(data: str, data_kind: str, image_mpp: float | None) -> Any:
    """Manifest rows (pluto.tiling) or image-folder rows, both with `read(row)`, `mpp` and `len`."""
    if data_kind == "images":
        return ImageRows(Path(data), image_mpp)
    from pluto.tiling.dataset import TileRows
    from pluto.tiling.manifest import as_manifest

    return TileRows(as_manifest(Path(data)))


def make_loader(rows: Any, ssl: SSLConfig, seed: int, pos: StreamPosition, *, num_workers: int, prefetch_factor: int,
                pin_memory: bool, augment_on: str = "cpu") -> DataLoader:
    """DataLoader doing the multi-crop on CPU workers, or only reads + plans with augment_on="device"
    (pinned memory, prefetch, persistent workers)."""
    return DataLoader(
        MultiCropStream(rows, seed, ssl, pos, augment_on),
        batch_size=pos.batch_size,
        num_workers=num_workers,
        collate_fn=MultiCropCollate(ssl, seed),
        pin_memory=pin_memory,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
    )
