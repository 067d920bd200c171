"""iBOT block masks for the student's global crops (DINOv2 / BEiT block-wise masking).

DINOv2 masks `mask_probability` (0.5) of the global crops; the i-th masked crop of n gets a target
ratio drawn from the i-th of n equal slices of `mask_ratio` (0.1, 0.5), so a batch covers the
range evenly. A mask is grown from random rectangles of area >= `min_patches` (4) and aspect ratio
in (1/max_aspect, max_aspect) (0.3 to 1/0.3) until the target count is reached or no rectangle adds
a new patch, capped at half the grid per rectangle as DINOv2's `max_num_patches = 0.5 * N`.
"""

from __future__ import annotations

import math

import numpy as np


def block_mask(
    rows: int, cols: int, n_target: int, rng: np.random.Generator, min_patches: int = 4, max_aspect: float = 1 / 0.3
) -> np.ndarray:
    """(rows, cols) bool mask with about `n_target` True patches laid out as overlapping rectangles."""
    mask = np.zeros((rows, cols), dtype=bool)
    max_per_block = max(1, int(0.5 * rows * cols))
    log_aspect = (-math.log(max_aspect), math.log(max_aspect))
    count = 0
    while count < n_target:
        budget = min(n_target - count, max_per_block)
        added = _add_block(mask, budget, rng, min_patches, log_aspect)
        if added == 0:
            break
        count += added
    return mask


def _add_block(
    mask: np.ndarray, budget: int, rng: np.random.Generator, min_patches: int, log_aspect: tuple[float, float]
) -> int:
    """Try up to 10 rectangles; set the first whose new patches number in (0, budget]. Returns that number."""
    rows, cols = mask.shape
    for _ in range(10):
        area = rng.uniform(min(min_patches, budget), budget)
        aspect = math.exp(rng.uniform(*log_aspect))
        h = int(round(math.sqrt(area * aspect)))
        w = int(round(math.sqrt(area / aspect)))
        if not (0 < h <= rows and 0 < w <= cols):
            continue
        top = int(rng.integers(0, rows - h + 1))
        left = int(rng.integers(0, cols - w + 1))
        new = h * w - int(mask[top : top + h, left : left + w].sum())
        if 0 < new <= budget:
            mask[top : top + h, left : left + w] = True
            return new
    return 0


def sample_masks(
    n_images: int,
    rows: int,
    cols: int,
    rng: np.random.Generator,
    probability: float = 0.5,
    ratio: tuple[float, float] = (0.1, 0.5),
    min_patches: int = 4,
    max_aspect: float = 1 / 0.3,
) -> np.ndarray:
    """(n_images, rows * cols) bool masks: int(n * probability) masked images in shuffled order, the rest empty."""
    n_patches = rows * cols
    n_masked = int(n_images * probability)
    edges = np.linspace(ratio[0], ratio[1], n_masked + 1)
    masks = np.zeros((n_images, n_patches), dtype=bool)
    for i in range(n_masked):
        n_target = int(n_patches * rng.uniform(edges[i], edges[i + 1]))
        masks[i] = block_mask(rows, cols, n_target, rng, min_patches, max_aspect).ravel()
    return masks[rng.permutation(n_images)]
