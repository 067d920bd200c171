"""Multi-crop augmentation for histology tiles and the collate function that adds iBOT masks.

Recipe: DINOv2's `DataAugmentationDINO` (2 global + 8 local crops; colour jitter p 0.8 with
brightness/contrast 0.4, saturation 0.2, hue 0.1; grayscale p 0.2; Gaussian blur p 1.0 / 0.1 / 0.5
on global 1 / global 2 / locals with sigma in (0.1, 2); solarize p 0.2 on global 2), plus what
histology adds: all eight flips/90-degree rotations (tissue has no canonical orientation) and
Midnight's HED stain jitter. PLUTO-4 §2.5 crops the views from 275 or 550 px tiles.

CPU cost: the tile stays uint8 through the crop (antialiased bilinear resize on uint8, which
torch runs on its fast integer path), flip and rotation; only the small crop becomes float for
the photometric ops. Colour ops are torchvision's (a hard dependency of timm, so present wherever
timm is). Randomness comes from torch's RNG (seeded per DataLoader worker) or an explicit
generator. How crops change the um/px the model sees is described in `pluto.ssl.config`; each
sample returns it per crop.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from pluto.errors import PlutoError
from pluto.ssl.config import SSLConfig
from pluto.ssl.hed import hed_jitter, sample_hed_factors
from pluto.ssl.masking import sample_masks


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _chance(p: float, generator: torch.Generator | None) -> bool:
    return p > 0 and float(torch.rand((), generator=generator, dtype=torch.float64)) < p


def sample_crop_box(
    tile_px: int, scale: tuple[float, float], aspect: tuple[float, float], generator: torch.Generator | None = None
) -> tuple[int, int, int, int]:
    """(x, y, w, h) in tile px: area fraction in `scale`, aspect ratio w/h log-uniform in `aspect`."""
    area = tile_px * tile_px * _uniform(*scale, generator)
    ratio = math.exp(_uniform(math.log(aspect[0]), math.log(aspect[1]), generator))
    w = min(tile_px, max(1, int(round(math.sqrt(area * ratio)))))
    h = min(tile_px, max(1, int(round(math.sqrt(area / ratio)))))
    x = int(torch.randint(0, tile_px - w + 1, (), generator=generator))
    y = int(torch.randint(0, tile_px - h + 1, (), generator=generator))
    return x, y, w, h


class MultiCropAugment:
    """uint8 (H, W, 3) tile -> dict of normalised float crops and per-crop effective um/px.

    Returns `global_crops` (n_global, 3, G, G), `local_crops` (n_local, 3, L, L), `global_mpp` /
    `local_mpp` (um/px each crop shows; NaN when the tile's mpp is not given) and `global_zoom` /
    `local_zoom` (crop px per tile px, > 1 means upsampled).
    """

    def __init__(self, cfg: SSLConfig) -> None:
        self.cfg = cfg
        self._mean = torch.tensor(cfg.mean).view(3, 1, 1)
        self._std = torch.tensor(cfg.std).view(3, 1, 1)

    def __call__(
        self, tile: np.ndarray, mpp: float | None = None, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        if tile.ndim != 3 or tile.shape[2] != 3 or tile.dtype != np.uint8 or tile.shape[0] != tile.shape[1]:
            raise PlutoError(f"multi-crop input must be a square uint8 (H, W, 3) tile, got {tile.dtype} {tile.shape}")
        cfg = self.cfg
        tile = np.ascontiguousarray(tile) if tile.flags.writeable else tile.copy()  # torch refuses read-only arrays
        img = torch.from_numpy(tile).permute(2, 0, 1)
        out: dict[str, list] = {k: [] for k in ("global_crops", "local_crops", "global_zoom", "local_zoom")}
        for i in range(cfg.n_global_crops):
            blur_p = cfg.blur_p[0] if i == 0 else cfg.blur_p[1]
            solarize_p = cfg.solarize_p if i == 1 else 0.0
            self._view(img, "global", cfg.global_crop_px, cfg.global_crop_scale, blur_p, solarize_p, out, generator)
        for _ in range(cfg.n_local_crops):
            self._view(img, "local", cfg.local_crop_px, cfg.local_crop_scale, cfg.blur_p[2], 0.0, out, generator)
        empty = {"global_crops": cfg.global_crop_px, "local_crops": cfg.local_crop_px}
        result = {
            k: (torch.stack(v) if v else torch.empty(0, 3, empty[k], empty[k])) if k in empty else torch.tensor(v)
            for k, v in out.items()
        }
        tile_mpp = float("nan") if mpp is None else float(mpp)
        for kind in ("global", "local"):
            result[f"{kind}_mpp"] = tile_mpp / result[f"{kind}_zoom"]
        return result

    def _view(self, img, kind, crop_px, scale, blur_p, solarize_p, out, generator) -> None:
        cfg = self.cfg
        x, y, w, h = sample_crop_box(img.shape[-1], scale, cfg.crop_aspect_ratio, generator)
        crop = F.interpolate(
            img[None, :, y : y + h, x : x + w], size=(crop_px, crop_px), mode="bilinear", antialias=True,
            align_corners=False,
        )[0]
        if _chance(0.5, generator):
            crop = crop.flip(-1)
        crop = torch.rot90(crop, int(torch.randint(0, 4, (), generator=generator)), dims=(-2, -1))
        crop = crop.float().div_(255.0)
        if _chance(cfg.hed_p, generator) and cfg.hed_strength > 0:
            crop = hed_jitter(crop, *sample_hed_factors(cfg.hed_strength, generator))
        if _chance(cfg.color_jitter_p, generator):
            crop = self._color_jitter(crop, generator)
        if _chance(cfg.grayscale_p, generator):
            crop = TF.rgb_to_grayscale(crop, num_output_channels=3)
        if _chance(blur_p, generator):
            sigma = _uniform(*cfg.blur_sigma, generator)
            crop = TF.gaussian_blur(crop, kernel_size=[9, 9], sigma=[sigma, sigma])
        if _chance(solarize_p, generator):
            crop = TF.solarize(crop, threshold=0.5)
        out[f"{kind}_crops"].append((crop - self._mean) / self._std)
        out[f"{kind}_zoom"].append(crop_px / math.sqrt(w * h))

    def _color_jitter(self, crop: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """torchvision ColorJitter semantics: factors drawn per op, ops applied in random order."""
        cfg = self.cfg
        ops = [
            (TF.adjust_brightness, 1 + _uniform(-cfg.brightness, cfg.brightness, generator)),
            (TF.adjust_contrast, 1 + _uniform(-cfg.contrast, cfg.contrast, generator)),
            (TF.adjust_saturation, 1 + _uniform(-cfg.saturation, cfg.saturation, generator)),
            (TF.adjust_hue, _uniform(-cfg.hue, cfg.hue, generator)),
        ]
        for j in torch.randperm(len(ops), generator=generator).tolist():
            op, factor = ops[j]
            crop = op(crop, factor)
        return crop


def collate_multicrop(
    samples: list[dict[str, torch.Tensor]], cfg: SSLConfig, rng: np.random.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Stack per-tile crops crop-major and add one set of iBOT masks per patch size.

    Output: `global_crops` (n_global * B, 3, G, G) with crop 0 of every tile first (DINOv2 order),
    `local_crops` (n_local * B, 3, L, L), `global_mpp`/`local_mpp`/`*_zoom` in the same order, and
    `masks_p{p}` (n_global * B, (G/p)^2) bool for every p in `cfg.patch_sizes` (the trainer picks
    the patch size per step after the loader has run). Without `rng` the masks draw from torch's RNG.
    """
    if rng is None:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
    batch = {key: torch.stack([s[key] for s in samples], dim=1).flatten(0, 1) for key in samples[0]}
    n_images = batch["global_crops"].shape[0]
    for p in cfg.patch_sizes:
        side = cfg.global_crop_px // p
        masks = sample_masks(
            n_images, side, side, rng, cfg.mask_probability, cfg.mask_ratio, cfg.mask_min_patches, cfg.mask_max_aspect
        )
        batch[f"masks_p{p}"] = torch.from_numpy(masks)
    return batch
