"""Slide-level (ABMIL) tiling: eva's tile resolution per slide set, and a bag task derived from a bundled slide.

The slide adapters (benchmarks.py) tile with eva's own `ForegroundGridSampler(max_samples=pad_size)`
at its default seed 42 (the same tiles in every run) at the `EVA_SLIDE_TILES` resolution of each set.
`magnification_bags` derives a slide-level task from a bundled slide: each bag holds the tiles of
`regions_per_bag` tissue regions read at one resolution and is labelled by that resolution, so a
bag's label is set by all of its tiles (the regions of a bag differ between bags of one resolution).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pluto.eval.derived import resolution_set

# (target_mpp, width = height) of the eva 0.4.5 slide configs' predict datasets (tests/eval/test_mil_seg_protocol.py
# checks them against the vendored YAML); the tile count per slide is the task's pad_size (eva_protocol.EVA_TASKS)
EVA_SLIDE_TILES = {"panda": (0.5, 224), "panda_small": (0.5, 224), "camelyon16": (0.25, 224), "camelyon16_small": (0.25, 224)}


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
