"""Region sampling for PLUTO-4's sampling mode: a budget of region centres spread over tissue.

PLUTO-4 samples 165M regions of usable tissue from 551,164 WSIs (~300 per slide) and reads
~640M tiles from them at 0.25/0.5/1.0/2.0 um/px (paper, "Data preprocessing"). Centres are drawn
by dart throwing (Poisson-disk): random candidate points on the usable-tissue mask, accepted when
no accepted centre lies within `radius`, so regions cover the tissue instead of clumping where a
uniform draw happens to land. The radius starts from the tissue area and the budget and shrinks
until the budget is met or the candidates run out; it is returned so callers can check spacing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Random sequential adsorption of disks saturates near 0.547 coverage: ~0.70 * A / r^2 centres
# fit in area A at spacing r. Starting at r = 0.7 * sqrt(A / n) leaves ~40% headroom.
_RADIUS_FACTOR = 0.7
_SHRINK = 0.7
_CANDIDATES_PER_REGION = 64


@dataclass(frozen=True)
class RegionSample:
    """Sampled centres in level-0 px (float, (x, y)) and the spacing they respect."""

    centres_l0: np.ndarray  # (n, 2) float64 x, y
    min_spacing_l0: float


def _poisson_disk(points: np.ndarray, radius: float, budget: int) -> np.ndarray:
    """Indices of points (in their order) accepted with pairwise distance >= radius."""
    cell = radius / np.sqrt(2.0)  # at most one accepted point per grid cell
    grid: dict[tuple[int, int], int] = {}
    accepted: list[int] = []
    r2 = radius * radius
    for i, (x, y) in enumerate(points):
        cx, cy = int(x // cell), int(y // cell)
        ok = True
        for gx in range(cx - 2, cx + 3):
            for gy in range(cy - 2, cy + 3):
                j = grid.get((gx, gy))
                if j is not None:
                    dx, dy = points[j, 0] - x, points[j, 1] - y
                    if dx * dx + dy * dy < r2:
                        ok = False
                        break
            if not ok:
                break
        if ok:
            grid[(cx, cy)] = i
            accepted.append(i)
            if len(accepted) == budget:
                break
    return np.asarray(accepted, dtype=np.int64)


def sample_regions(mask: np.ndarray, downsample: float, budget: int, seed: int) -> RegionSample:
    """Up to `budget` region centres on the True pixels of `mask` (H x W, `downsample` level-0 px
    per mask px), seeded; fewer only when the mask is too small to hold them at any spacing."""
    ys, xs = np.nonzero(mask)
    if budget <= 0 or xs.size == 0:
        return RegionSample(np.zeros((0, 2)), 0.0)
    rng = np.random.default_rng(seed)
    n_cand = min(xs.size * 4, max(budget * _CANDIDATES_PER_REGION, 1024))
    pick = rng.integers(0, xs.size, size=n_cand)
    # jitter inside the mask pixel so centres are continuous, not on the mask lattice
    points = np.stack([xs[pick] + rng.random(n_cand), ys[pick] + rng.random(n_cand)], axis=1)
    radius = _RADIUS_FACTOR * float(np.sqrt(xs.size / budget))
    while True:
        keep = _poisson_disk(points, radius, budget)
        if keep.size >= budget or radius < 0.5:
            break
        radius *= _SHRINK
    return RegionSample(points[keep] * downsample, radius * downsample)
