"""HED stain jitter, multi-crop geometry/um-per-px bookkeeping, block masks and collation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pluto.errors import ConfigError, PlutoError
from pluto.ssl import MultiCropAugment, SSLConfig, block_mask, collate_multicrop, hed_jitter, sample_hed_factors, sample_masks
from pluto.ssl.hed import HED_FROM_RGB, SKIMAGE_OD_UNIT


def _as_float(tile: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(tile.copy()).permute(2, 0, 1).float() / 255


def test_hed_jitter_is_identity_at_zero_strength(crc_tiles):
    img = _as_float(crc_tiles[0])
    alpha, beta = sample_hed_factors(0.0)
    assert torch.equal(alpha, torch.ones(3, dtype=alpha.dtype)) and torch.equal(beta, torch.zeros(3, dtype=beta.dtype))
    assert torch.allclose(hed_jitter(img, alpha, beta), img.clamp_min(1e-6), atol=1e-5)


def test_hed_jitter_stays_in_range_and_scales_stain_concentrations(crc_tiles):
    img = _as_float(crc_tiles[5])
    alpha, beta = torch.tensor([1.05, 0.95, 1.0], dtype=torch.float64), torch.tensor([0.02, -0.01, 0.0], dtype=torch.float64)
    out = hed_jitter(img, alpha, beta)  # shifts in skimage HED units
    assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1
    assert (out - img).abs().mean() > 0.01  # it does change the image
    # where nothing was clipped, concentrations (skimage units: OD / ln(1e6)) obey C' = alpha * C + beta (Tellez et al. 2019)
    def conc(x):
        od = -torch.log(x.clamp_min(1e-6)).reshape(3, -1).double()
        return HED_FROM_RGB.t() @ od / SKIMAGE_OD_UNIT

    inside = ((out > 1e-3) & (out < 0.999)).all(dim=0).reshape(-1)
    assert inside.float().mean() > 0.3
    c, c2 = conc(img)[:, inside], conc(out)[:, inside]
    assert torch.allclose(c2, alpha.view(3, 1) * c + beta.view(3, 1), atol=1e-4)


@pytest.mark.parametrize("strength", [0.05, 0.2])  # Tellez et al. 2019's HED-light and HED-strong sigmas
def test_hed_strength_gives_skimages_shift(crc_tiles, strength):
    """The same draw through skimage.color (rgb2hed, perturb, hed2rgb) gives the same image. rgb2hed
    clips negative concentrations (most H&E pixels have a slightly negative DAB), so both run on the
    tile as skimage represents it, hed2rgb(rgb2hed(tile)), whose concentrations are all >= 0."""
    from skimage.color import hed2rgb, rgb2hed

    rgb = hed2rgb(rgb2hed(crc_tiles[7].astype(np.float64) / 255))
    alpha, beta = sample_hed_factors(strength, torch.Generator().manual_seed(3))
    expected = hed2rgb(rgb2hed(rgb) * alpha.numpy() + beta.numpy())
    got = hed_jitter(torch.from_numpy(rgb).permute(2, 0, 1).float(), alpha, beta).permute(1, 2, 0).double().numpy()
    np.testing.assert_allclose(got, expected, atol=2e-4)
    shift = (got - rgb).mean(axis=(0, 1))
    np.testing.assert_allclose(shift, (expected - rgb).mean(axis=(0, 1)), atol=1e-5)
    assert np.abs(shift).max() > 0.02  # a visible stain change, not a rounding-level one


def test_multicrop_shapes_range_and_effective_mpp(crc_tiles):
    cfg = SSLConfig(global_crop_px=112, local_crop_px=48, patch_sizes=(16,))
    out = MultiCropAugment(cfg)(crc_tiles[0], mpp=0.5, generator=torch.Generator().manual_seed(0))
    assert out["global_crops"].shape == (2, 3, 112, 112) and out["local_crops"].shape == (8, 3, 48, 48)
    assert out["global_crops"].dtype == torch.float32 and torch.isfinite(out["global_crops"]).all()
    # um/px the model sees = tile mpp * crop side (tile px) / crop px; sides follow the area scales
    side_g = out["global_mpp"] * 112 / 0.5  # crop side in tile px
    side_l = out["local_mpp"] * 48 / 0.5
    assert torch.allclose(out["global_mpp"] * out["global_zoom"], torch.full((2,), 0.5))
    assert ((side_g >= 224 * 0.32**0.5 - 1) & (side_g <= 224 + 1e-3)).all()
    assert ((side_l >= 224 * 0.05**0.5 - 1) & (side_l <= 224 * 0.32**0.5 + 1)).all()
    assert torch.isnan(MultiCropAugment(cfg)(crc_tiles[0])["global_mpp"]).all()  # unknown tile mpp stays unknown


def test_multicrop_is_deterministic_given_a_generator(crc_tiles):
    cfg = SSLConfig(global_crop_px=64, local_crop_px=32, patch_sizes=(16,))
    aug = MultiCropAugment(cfg)
    a = aug(crc_tiles[3], mpp=1.0, generator=torch.Generator().manual_seed(7))
    b = aug(crc_tiles[3], mpp=1.0, generator=torch.Generator().manual_seed(7))
    c = aug(crc_tiles[3], generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["global_crops"], c["global_crops"])


def test_identity_augmentation_reproduces_the_tile(crc_tiles):
    """Every photometric op off and a full-tile crop: the crop is the normalised tile up to D4 symmetry."""
    cfg = SSLConfig(
        global_crop_px=224, n_local_crops=0, global_crop_scale=(1.0, 1.0), color_jitter_p=0, grayscale_p=0,
        blur_p=(0, 0, 0), solarize_p=0, hed_p=0, mean=(0, 0, 0), std=(1, 1, 1), patch_sizes=(16,),
    )
    out = MultiCropAugment(cfg)(crc_tiles[2], generator=torch.Generator().manual_seed(0))
    tile = _as_float(crc_tiles[2])
    views = [torch.rot90(t, k, dims=(-2, -1)) for t in (tile, tile.flip(-1)) for k in range(4)]
    for crop in out["global_crops"]:
        assert min((crop - v).abs().max().item() for v in views) < 1e-6


def test_multicrop_refuses_non_tiles():
    aug = MultiCropAugment(SSLConfig())
    with pytest.raises(PlutoError, match="uint8"):
        aug(np.zeros((64, 64, 3), dtype=np.float32))
    with pytest.raises(PlutoError, match="square"):
        aug(np.zeros((64, 32, 3), dtype=np.uint8))


def test_config_refuses_crops_the_patch_size_does_not_divide():
    with pytest.raises(ConfigError, match="local_crop_px=96.*14"):
        SSLConfig(patch_sizes=(14,))
    with pytest.raises(ConfigError, match="centering"):
        SSLConfig(centering="mean")
    cfg = SSLConfig(patch_sizes=(8, 16, 32))
    assert SSLConfig.from_dict(cfg.to_dict()) == cfg


def test_block_mask_reaches_the_requested_count_without_exceeding_it():
    rng = np.random.default_rng(0)
    fills = []
    for target in (20, 40, 98):
        for _ in range(20):
            m = block_mask(14, 14, target, rng)
            assert m.sum() <= target
            fills.append(m.sum() / target)
    assert np.mean(fills) > 0.95


def test_sample_masks_masks_the_requested_share_with_ratios_spread_over_the_range():
    rng = np.random.default_rng(0)
    masks = sample_masks(64, 14, 14, rng, probability=0.5, ratio=(0.1, 0.5))
    ratios = masks.mean(axis=1)
    masked = ratios[ratios > 0]
    assert len(masked) == 32
    assert masked.max() <= 0.5 and masked.min() >= 0.05
    assert abs(masked.mean() - 0.3) < 0.05  # evenly spread over (0.1, 0.5)
    assert abs(np.median(np.flatnonzero(ratios > 0)) - 31.5) < 12  # shuffled, not all at the front


def test_collate_is_crop_major_with_masks_per_patch_size(crc_tiles):
    cfg = SSLConfig(global_crop_px=64, local_crop_px=32, n_local_crops=3, patch_sizes=(16, 32))
    aug = MultiCropAugment(cfg)
    gen = torch.Generator().manual_seed(0)
    samples = [aug(t, mpp=m, generator=gen) for t, m in zip(crc_tiles[:4], (0.25, 0.5, 1.0, 2.0))]
    batch = collate_multicrop(samples, cfg, np.random.default_rng(0))
    assert batch["global_crops"].shape == (8, 3, 64, 64) and batch["local_crops"].shape == (12, 3, 32, 32)
    assert torch.equal(batch["global_crops"][1], samples[1]["global_crops"][0])  # crop 0 of every tile first
    assert torch.equal(batch["global_crops"][4 + 2], samples[2]["global_crops"][1])
    assert torch.equal(batch["local_mpp"][4 * 2 + 3], samples[3]["local_mpp"][2])
    assert batch["masks_p16"].shape == (8, 16) and batch["masks_p32"].shape == (8, 4)
    assert batch["masks_p16"].dtype == torch.bool and int(batch["masks_p16"].any(dim=1).sum()) == 4
