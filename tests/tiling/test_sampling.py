"""Region sampling on the real tissue mask of the CMU slide: budget, spread, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from pluto.qc import tissue_mask
from pluto.slides import read_thumbnail
from pluto.tiling.sampling import sample_regions

THUMB_MPP = 8.0


@pytest.fixture(scope="module")
def mask_and_downsample(cmu_svs):
    thumb, downsample = read_thumbnail(cmu_svs, THUMB_MPP)
    mask = tissue_mask(thumb, THUMB_MPP)
    assert 0.05 < mask.mean() < 0.95  # the slide has tissue and background
    return mask, downsample


@pytest.mark.parametrize("budget", [1, 10, 40])
def test_budget_met_and_centres_on_tissue(mask_and_downsample, budget):
    mask, ds = mask_and_downsample
    s = sample_regions(mask, ds, budget, seed=0)
    assert s.centres_l0.shape == (budget, 2)
    cols = (s.centres_l0[:, 0] / ds).astype(int)
    rows = (s.centres_l0[:, 1] / ds).astype(int)
    assert mask[rows, cols].all()


def test_regions_are_spread_not_clumped(mask_and_downsample):
    mask, ds = mask_and_downsample
    budget = 30
    s = sample_regions(mask, ds, budget, seed=4)
    d = pdist(s.centres_l0)
    assert d.min() >= s.min_spacing_l0 - 1e-9
    # spacing stays on the scale of the tissue area per region (never collapses to a clump)
    area_l0 = mask.sum() * ds * ds
    assert s.min_spacing_l0 >= 0.3 * np.sqrt(area_l0 / budget)
    # a uniform draw of the same size typically has a much closer pair
    ys, xs = np.nonzero(mask)
    rng = np.random.default_rng(0)
    uniform = rng.choice(len(xs), size=budget, replace=False)
    assert d.min() > pdist(np.stack([xs[uniform], ys[uniform]], 1) * ds).min()


def test_seeded_and_reproducible(mask_and_downsample):
    mask, ds = mask_and_downsample
    a = sample_regions(mask, ds, 20, seed=11).centres_l0
    assert np.array_equal(a, sample_regions(mask, ds, 20, seed=11).centres_l0)
    assert not np.array_equal(a, sample_regions(mask, ds, 20, seed=12).centres_l0)


def test_budget_beyond_capacity_returns_what_fits():
    mask = np.zeros((20, 20), dtype=bool)
    mask[5, 5] = mask[5, 6] = True
    s = sample_regions(mask, 4.0, 50, seed=0)
    assert 1 <= len(s.centres_l0) < 50
    assert len(sample_regions(np.zeros((4, 4), bool), 4.0, 5, seed=0).centres_l0) == 0
