"""Slide access: metadata with MPP provenance, level choice, tile/thumbnail reads, handle pool, ingestion.

OpenSlide is imported lazily inside the functions that open slides.
"""

from pluto.slides.geometry import TileRequest, TileSpec, best_level, check_resolution, plan_read
from pluto.slides.handles import (
    SlideHandle, clear_pool, configure_pool, configure_slide_access, get_handle, open_slide, pool_paths,
)
from pluto.slides.ingest import CATALOG_COLUMNS, ingest
from pluto.slides.ingest_file import preflight
from pluto.slides.metadata import SlideInfo, slide_info
from pluto.slides.pyramid_writer import write_pyramid
from pluto.slides.reader import read_request, read_thumbnail, read_tile, resize_area
from pluto.slides.decoded_tiles import clear_tile_cache, configure_tile_cache, tile_cache

__all__ = [
    "CATALOG_COLUMNS",
    "SlideHandle",
    "SlideInfo",
    "TileRequest",
    "TileSpec",
    "best_level",
    "check_resolution",
    "clear_pool",
    "clear_tile_cache",
    "configure_pool",
    "configure_slide_access",
    "configure_tile_cache",
    "get_handle",
    "ingest",
    "open_slide",
    "plan_read",
    "pool_paths",
    "preflight",
    "read_request",
    "read_thumbnail",
    "read_tile",
    "resize_area",
    "slide_info",
    "tile_cache",
    "write_pyramid",
]
