"""Global sample order and loader sharding: exact coverage, exact resume, world-size changes."""

from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data import DataLoader

from pluto.slides import read_tile
from pluto.tiling import GlobalOrder, TileDataset, TileIterableDataset, collate_tiles
from pluto.tiling.order import permute, shard_indices


@pytest.mark.parametrize("n", [1, 2, 3, 30, 1000, 4097])
def test_permute_is_a_bijection(n):
    out = permute(np.arange(n), n, seed=7, epoch=3)
    assert np.array_equal(np.sort(out), np.arange(n))


def test_order_depends_on_seed_and_epoch_only():
    a = GlobalOrder(1000, seed=1).rows(np.arange(3000))
    assert np.array_equal(a, GlobalOrder(1000, seed=1).rows(np.arange(3000)))
    epochs = a.reshape(3, 1000)
    assert all(np.array_equal(np.sort(e), np.arange(1000)) for e in epochs)
    assert not np.array_equal(epochs[0], epochs[1])  # a fresh shuffle each epoch
    assert not np.array_equal(a, GlobalOrder(1000, seed=2).rows(np.arange(3000)))
    assert not np.array_equal(epochs[0], np.arange(1000))


def test_shard_indices_partition_the_global_range():
    seen = []
    for rank in range(3):
        for worker in range(2):
            seen += [g for block in shard_indices(5, 105, rank, 3, worker, 2, batch_size=4, block=3) for g in block]
    assert sorted(seen) == list(range(5, 105))


def _rows(ds) -> list[int]:
    return list(ds.row_stream())


def test_union_over_ranks_and_workers_is_each_row_once_per_epoch(loader_manifest):
    n = len(loader_manifest)
    rows = []
    for rank in range(2):
        ds = TileIterableDataset(loader_manifest, rank=rank, world_size=2, seed=3, end_index=2 * n, batch_size=2)
        loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_tiles)
        for tiles, batch_rows in loader:
            assert tiles.shape[1:] == (16, 16, 3)
            rows += batch_rows.tolist()
    assert len(rows) == 2 * n
    counts = np.bincount(rows, minlength=n)
    assert counts.tolist() == [2] * n  # two epochs: every row exactly twice


def test_dataloader_returns_the_global_sequence_in_order(loader_manifest):
    """With batch_size matching the DataLoader, workers' batches interleave back into global order."""
    n = len(loader_manifest)
    expected = GlobalOrder(n, seed=5).rows(np.arange(0, 40)).tolist()
    ds = TileIterableDataset(loader_manifest, seed=5, end_index=40, batch_size=4)
    got = [r for _, rows in DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_tiles) for r in rows.tolist()]
    assert got == expected


def test_resume_from_start_index_yields_exactly_the_rest(loader_manifest):
    full = _rows(TileIterableDataset(loader_manifest, seed=9, end_index=75))
    for start in (0, 17, 30, 44):
        assert _rows(TileIterableDataset(loader_manifest, seed=9, start_index=start, end_index=75)) == full[start:]


def test_resume_with_another_world_size_continues_the_same_sequence(loader_manifest):
    full = _rows(TileIterableDataset(loader_manifest, seed=9, end_index=90))
    # 2 ranks ran 4 steps of batch 3 each: global index 24 was checkpointed; resume on 3 ranks
    first = [_rows(TileIterableDataset(loader_manifest, rank=r, world_size=2, seed=9, end_index=24)) for r in range(2)]
    rest = [_rows(TileIterableDataset(loader_manifest, rank=r, world_size=3, seed=9, start_index=24, end_index=90))
            for r in range(3)]
    merged = [None] * 90
    for r, seq in enumerate(first):
        merged[r:24:2] = seq
    for r, seq in enumerate(rest):
        merged[24 + r : 90 : 3] = seq
    assert merged == full


def test_iterable_tiles_match_direct_reads(loader_manifest):
    ds = TileIterableDataset(loader_manifest, seed=1, end_index=5)
    for tile, row in ds:
        r = loader_manifest.iloc[row]
        assert np.array_equal(tile, read_tile(r.path, int(r.x_l0), int(r.y_l0), float(r.mpp), int(r.tile_px)))


def test_map_dataset_item_and_transform(loader_manifest):
    ds = TileDataset(loader_manifest, transform=lambda t: t.mean())
    value, idx = ds[3]
    r = loader_manifest.iloc[3]
    assert idx == 3 and value == pytest.approx(read_tile(r.path, int(r.x_l0), int(r.y_l0), 2.0, 16).mean())
    with pytest.raises(IndexError):
        ds[len(ds)]
