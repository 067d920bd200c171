"""Bags of tiles for slide-level (ABMIL) tasks: a tissue grid per whole-slide image, and a derived bag task.

`tissue_grid` lays a grid of `tile_px` tiles at `mpp` over a slide and keeps the cells whose
thumbnail region is tissue (mean HSV saturation, as the resolution task), then a seeded sample of
at most `max_tiles`. eva's slide configs tile with a `ForegroundGridSampler(max_samples=pad_size)`
of fixed seed 42 (the same tiles in every run) at the `EVA_SLIDE_TILES` resolution of each set.
`magnification_bags` derives a slide-level task from a bundled slide: each bag holds the tiles of
`regions_per_bag` tissue regions read at one resolution and is labelled by that resolution, so a
bag's label is set by all of its tiles (the regions of a bag differ between bags of one resolution).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pluto.errors import PlutoError
from pluto.eval.derived import MIN_TISSUE_SATURATION, resolution_set, saturation

if TYPE_CHECKING:
    import pandas as pd

# (target_mpp, width = height) of the eva 0.4.5 slide configs' predict datasets (tests/eval/test_mil_seg_protocol.py
# checks them against the vendored YAML); the tile count per slide is the task's pad_size (eva_protocol.EVA_TASKS)
EVA_SLIDE_TILES = {"panda": (0.5, 224), "panda_small": (0.5, 224), "camelyon16": (0.25, 224), "camelyon16_small": (0.25, 224)}
EVA_SAMPLER_SEED = 42  # ForegroundGridSampler's default seed, which the configs keep
THUMB_PX_PER_TILE = 8  # thumbnail resolution: 8 x 8 thumbnail px per grid cell


def tissue_grid(slide: Path, mpp: float, tile_px: int, max_tiles: int, seed: int = EVA_SAMPLER_SEED) -> pd.DataFrame:
    """Tile manifest rows (path, x_l0, y_l0, mpp, tile_px) of the tissue cells of one slide."""
    import pandas as pd

    from pluto.slides import read_thumbnail, slide_info

    info = slide_info(slide)
    fov_l0 = tile_px * mpp / info.mpp
    thumb, down = read_thumbnail(slide, mpp * tile_px / THUMB_PX_PER_TILE)
    cells = []
    for y in np.arange(0, info.height - fov_l0 + 1, fov_l0):
        for x in np.arange(0, info.width - fov_l0 + 1, fov_l0):
            t = thumb[int(y / down): int((y + fov_l0) / down), int(x / down): int((x + fov_l0) / down)]
            if t.size and saturation(t) >= MIN_TISSUE_SATURATION:
                cells.append((int(x), int(y)))
    if not cells:
        raise PlutoError(f"{slide}: no tissue cells for {tile_px}-px tiles at {mpp} um/px")
    keep = sorted(np.random.default_rng(seed).permutation(len(cells))[:max_tiles])
    return pd.DataFrame({"path": str(slide), "x_l0": [cells[i][0] for i in keep], "y_l0": [cells[i][1] for i in keep],
                         "mpp": float(mpp), "tile_px": int(tile_px)})


def magnification_bags(slide: Path, tile_px: int, regions_per_bag: int = 4, max_regions: int = 40
                       ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, np.ndarray]:
    """(tile images uint8 (N, px, px, 3), item indices per bag, bag label = resolution index, bag group).

    Bags of one region chunk (at the three resolutions) share a group so folds keep them together.
    """
    images, labels, regions = resolution_set(Path(slide), tile_px=tile_px, max_regions=max_regions)
    chunk = regions // regions_per_bag
    bags, bag_y, bag_group = [], [], []
    for k in np.unique(labels):
        for c in np.unique(chunk):
            bags.append(np.flatnonzero((labels == k) & (chunk == c))), bag_y.append(int(k)), bag_group.append(int(c))
    return images, bags, np.array(bag_y, np.int64), np.array(bag_group, np.int64)
