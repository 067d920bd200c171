"""Multi-resolution tiling: tile grids and PLUTO-4 region sampling -> sharded coordinate
manifests; torch datasets that read the tiles from the slides; WebDataset tar export.

Imports without openslide (pixel reads go through pluto.slides lazily) and without torch: the
datasets load torch on first access.
"""

from pluto.tiling.cohort import TileFilter, tile_cohort, tile_slide
from pluto.tiling.manifest import MANIFEST_COLUMNS, read_manifest, read_spec, read_summary
from pluto.tiling.order import GlobalOrder, shard_indices

_TORCH_NAMES = {"TileDataset", "TileIterableDataset", "collate_tiles"}
_WDS_NAMES = {"export_webdataset", "read_webdataset"}


def __getattr__(name: str):
    if name in _TORCH_NAMES:
        from pluto.tiling import dataset

        return getattr(dataset, name)
    if name in _WDS_NAMES:
        from pluto.tiling import webdataset

        return getattr(webdataset, name)
    raise AttributeError(f"module 'pluto.tiling' has no attribute {name!r}")


__all__ = [
    "MANIFEST_COLUMNS",
    "GlobalOrder",
    "TileDataset",
    "TileFilter",
    "TileIterableDataset",
    "collate_tiles",
    "export_webdataset",
    "read_manifest",
    "read_spec",
    "read_summary",
    "read_webdataset",
    "shard_indices",
    "tile_cohort",
    "tile_slide",
]
