"""Labeled sets derived from the bundled slides (shared/data/README.md): resolution prediction.

Each tissue region is read at 0.5, 1.0 and 2.0 um/px around the same centre and labelled by its
resolution. Magnification prediction is a known probe for pathology encoders: the three reads
show the same tissue, so only scale cues (nucleus size, texture frequency) separate the classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pluto.errors import PlutoError

RESOLUTION_MPPS = (0.5, 1.0, 2.0)
MIN_TISSUE_SATURATION = 0.08  # mean HSV saturation of the coarsest read; glass background is ~0.02


def saturation(rgb: np.ndarray) -> float:
    f = rgb.astype(np.float32) / 255.0
    mx, mn = f.max(-1), f.min(-1)
    return float(np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0).mean())


def resolution_set(slide: Path, tile_px: int = 112, mpps: tuple[float, ...] = RESOLUTION_MPPS,
                   max_regions: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 (N, tile_px, tile_px, 3), labels int (index into `mpps`), region id per image).

    Regions are centres of a grid whose step is half the coarsest field of view, kept when the coarsest
    read is tissue (saturation), then a seeded sample of `max_regions`. Region ids let folds keep
    the three reads of one region together.
    """
    from pluto.slides import get_handle, read_tile

    handle = get_handle(slide)
    info = handle.info
    fov_l0 = [tile_px * m / info.mpp for m in mpps]  # level-0 px covered per resolution
    half = int(np.ceil(max(fov_l0) / 2))  # grid step = half the coarsest field of view
    centres = [(x, y) for y in range(half, info.height - half + 1, half) for x in range(half, info.width - half + 1, half)]
    if not centres:
        raise PlutoError(f"{slide}: too small for {tile_px}-px tiles at {max(mpps)} um/px")
    kept = [c for c in centres
            if saturation(read_tile(handle, int(c[0] - fov_l0[-1] / 2), int(c[1] - fov_l0[-1] / 2), mpps[-1], tile_px)) >= MIN_TISSUE_SATURATION]
    rng = np.random.default_rng(seed)
    kept = [kept[i] for i in sorted(rng.permutation(len(kept))[:max_regions])]
    if not kept:
        raise PlutoError(f"{slide}: no tissue regions for the resolution task")
    images, labels, regions = [], [], []
    for r, (cx, cy) in enumerate(kept):
        for k, (m, fov) in enumerate(zip(mpps, fov_l0)):
            images.append(read_tile(handle, int(round(cx - fov / 2)), int(round(cy - fov / 2)), m, tile_px))
            labels.append(k), regions.append(r)
    return np.stack(images), np.array(labels, np.int64), np.array(regions, np.int64)
