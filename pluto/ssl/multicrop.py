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
from pluto.ssl.batched_color import apply_where, color_jitter, gaussian_blur
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


VIEW_KINDS = ("global", "local")


class MultiCropAugment:
    """uint8 (H, W, 3) tile -> dict of normalised float crops and per-crop effective um/px.

    Returns `global_crops` (n_global, 3, G, G), `local_crops` (n_local, 3, L, L), `global_mpp` /
    `local_mpp` (um/px each crop shows; NaN when the tile's mpp is not given) and `global_zoom` /
    `local_zoom` (crop px per tile px, > 1 means upsampled).

    Two halves, so the work can sit where it is cheapest: `plan` draws every random choice of a
    tile's views (boxes, flips, rotations, stain/colour factors, blur sigmas) as small CPU tensors
    from `generator`; `render` applies a plan to the uint8 tile on whatever device the tile is on,
    with geometry per view and the photometric ops batched over views (`pluto.ssl.batched_color`).
    `__call__` is both in a DataLoader worker; `render` of a micro-batch is the device path (workers ship
    uint8 tiles and plans, the GPU renders the micro-batch). Same plan, same crops.
    """

    def __init__(self, cfg: SSLConfig) -> None:
        self.cfg = cfg
        self._mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
        self._std = torch.tensor(cfg.std).view(1, 3, 1, 1)

    def __call__(
        self, tile: np.ndarray, mpp: float | None = None, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        img = tile_tensor(tile)
        plan = self.plan(img.shape[-1], mpp, generator)
        return {**plan_outputs(plan), **self.render([img], [plan])}

    def plan(self, tile_px: int, mpp: float | None = None, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Every random draw for one tile's views, keyed `<kind>_<what>` (first axis: view)."""
        cfg = self.cfg
        views = [("global", cfg.global_crop_px, cfg.global_crop_scale, cfg.blur_p[0] if i == 0 else cfg.blur_p[1],
                  cfg.solarize_p if i == 1 else 0.0) for i in range(cfg.n_global_crops)]
        views += [("local", cfg.local_crop_px, cfg.local_crop_scale, cfg.blur_p[2], 0.0)] * cfg.n_local_crops
        rows: dict[str, list] = {}
        for kind, crop_px, scale, blur_p, solarize_p in views:
            for key, value in self._draw(tile_px, crop_px, scale, blur_p, solarize_p, generator).items():
                rows.setdefault(f"{kind}_{key}", []).append(value)
        tile_mpp = float("nan") if mpp is None else float(mpp)
        plan = {}
        for kind in VIEW_KINDS:
            n = cfg.n_global_crops if kind == "global" else cfg.n_local_crops
            for key, dtype, empty in _PLAN_FIELDS:
                values = rows.get(f"{kind}_{key}", [])
                plan[f"{kind}_{key}"] = torch.tensor(values, dtype=dtype) if n else torch.empty((0, *empty), dtype=dtype)
            plan[f"{kind}_mpp"] = tile_mpp / plan[f"{kind}_zoom"]
        return plan

    def _draw(self, tile_px, crop_px, scale, blur_p, solarize_p, generator) -> dict[str, object]:
        cfg = self.cfg
        x, y, w, h = sample_crop_box(tile_px, scale, cfg.crop_aspect_ratio, generator)
        flip = _chance(0.5, generator)
        rot = int(torch.randint(0, 4, (), generator=generator))
        alpha, beta = [1.0] * 3, [0.0] * 3
        hed = _chance(cfg.hed_p, generator) and cfg.hed_strength > 0
        if hed:
            a, b = sample_hed_factors(cfg.hed_strength, generator)
            alpha, beta = a.tolist(), b.tolist()
        jitter = _chance(cfg.color_jitter_p, generator)
        factors, order = [1.0, 1.0, 1.0, 0.0], list(range(4))
        if jitter:  # torchvision ColorJitter: a factor per op, ops in random order
            factors = [1 + _uniform(-cfg.brightness, cfg.brightness, generator), 1 + _uniform(-cfg.contrast, cfg.contrast, generator),
                       1 + _uniform(-cfg.saturation, cfg.saturation, generator), _uniform(-cfg.hue, cfg.hue, generator)]
            order = torch.randperm(4, generator=generator).tolist()
        gray = _chance(cfg.grayscale_p, generator)
        sigma = _uniform(*cfg.blur_sigma, generator) if _chance(blur_p, generator) else 0.0
        return {"box": [x, y, w, h], "flip": flip, "rot": rot, "hed": hed, "alpha": alpha, "beta": beta, "jitter": jitter,
                "factors": factors, "order": order, "gray": gray, "sigma": sigma, "solarize": _chance(solarize_p, generator),
                "zoom": crop_px / math.sqrt(w * h)}

    def render(self, tiles: list[torch.Tensor], plans: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """uint8 (3, H, W) tiles (any device, sizes may differ) + their plans -> crops, crop-major:
        `<kind>_crops` (n_views * B, 3, S, S) with view 0 of every tile first (DINOv2 order)."""
        out = {}
        for kind in VIEW_KINDS:
            crop_px = self.cfg.global_crop_px if kind == "global" else self.cfg.local_crop_px
            p = {k: torch.stack([pl[f"{kind}_{k}"] for pl in plans], dim=1).flatten(0, 1) for k, _, _ in _PLAN_FIELDS}
            n_views = plans[0][f"{kind}_box"].shape[0]
            crops = [_geometry(tiles[i % len(tiles)], p["box"][i].tolist(), bool(p["flip"][i]), int(p["rot"][i]), crop_px)
                     for i in range(n_views * len(tiles))]
            device = tiles[0].device
            x = torch.stack(crops).float().div_(255.0) if crops else torch.empty(0, 3, crop_px, crop_px, device=device)
            out[f"{kind}_crops"] = self._photometric(x, {k: v.to(device) for k, v in p.items()})
        return out

    def _photometric(self, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        x = apply_where(x, p["hed"], hed_jitter, p["alpha"], p["beta"])
        x = color_jitter(x, p["factors"], p["order"], p["jitter"])
        x = apply_where(x, p["gray"], lambda im: TF.rgb_to_grayscale(im, num_output_channels=3))
        x = apply_where(x, p["sigma"] > 0, gaussian_blur, p["sigma"])
        x = apply_where(x, p["solarize"], lambda im: TF.solarize(im, threshold=0.5))
        return (x - self._mean.to(x.device)) / self._std.to(x.device)


# plan entries per view: name, dtype, shape of one view's value
_PLAN_FIELDS = (
    ("box", torch.int64, (4,)), ("flip", torch.bool, ()), ("rot", torch.int64, ()), ("hed", torch.bool, ()),
    ("alpha", torch.float64, (3,)), ("beta", torch.float64, (3,)), ("jitter", torch.bool, ()),
    ("factors", torch.float32, (4,)), ("order", torch.int64, (4,)), ("gray", torch.bool, ()),
    ("sigma", torch.float32, ()), ("solarize", torch.bool, ()), ("zoom", torch.float32, ()),
)
PLAN_OUTPUTS = ("global_mpp", "local_mpp", "global_zoom", "local_zoom")


def plan_outputs(plan: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The per-crop values a batch carries besides the crops (effective um/px and zoom)."""
    return {k: plan[k] for k in PLAN_OUTPUTS}


def tile_tensor(tile: np.ndarray) -> torch.Tensor:
    """Square uint8 (H, W, 3) array -> (3, H, W) uint8 tensor; anything else is refused."""
    if tile.ndim != 3 or tile.shape[2] != 3 or tile.dtype != np.uint8 or tile.shape[0] != tile.shape[1]:
        raise PlutoError(f"multi-crop input must be a square uint8 (H, W, 3) tile, got {tile.dtype} {tile.shape}")
    tile = np.ascontiguousarray(tile) if tile.flags.writeable else tile.copy()  # torch refuses read-only arrays
    return torch.from_numpy(tile).permute(2, 0, 1)


def _geometry(img: torch.Tensor, box: list[int], flip: bool, rot: int, crop_px: int) -> torch.Tensor:
    """Crop `box` (x, y, w, h) of a uint8 (3, H, W) tile, resize (bilinear, antialiased), flip, rotate."""
    x, y, w, h = box
    region = img[None, :, y : y + h, x : x + w]
    if region.device.type != "cpu":  # antialiased uint8 resizing is a CPU kernel; elsewhere resize in float and requantise
        region = region.float()
    crop = F.interpolate(region, size=(crop_px, crop_px), mode="bilinear", antialias=True, align_corners=False)[0]
    crop = crop.round_().clamp_(0, 255) if crop.is_floating_point() else crop
    if flip:
        crop = crop.flip(-1)
    return torch.rot90(crop, rot, dims=(-2, -1))


def collate_multicrop(
    samples: list[dict[str, torch.Tensor]], cfg: SSLConfig, rng: np.random.Generator | None = None,
    n_images: int | None = None,
) -> dict[str, torch.Tensor]:
    """Stack per-tile crops crop-major and add one set of iBOT masks per patch size.

    Output: `global_crops` (n_global * B, 3, G, G) with crop 0 of every tile first (DINOv2 order),
    `local_crops` (n_local * B, 3, L, L), `global_mpp`/`local_mpp`/`*_zoom` in the same order, and
    `masks_p{p}` (n_global * B, (G/p)^2) bool for every p in `cfg.patch_sizes` (the trainer picks
    the patch size per step after the loader has run). Without `rng` the masks draw from torch's RNG.
    `n_images` (global crops in the batch) is needed only when the samples carry no crops (device-side
    augmentation renders them later).
    """
    if rng is None:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
    batch = {key: torch.stack([s[key] for s in samples], dim=1).flatten(0, 1) for key in samples[0]}
    n_images = batch["global_crops"].shape[0] if n_images is None else n_images
    for p in cfg.patch_sizes:
        side = cfg.global_crop_px // p
        masks = sample_masks(
            n_images, side, side, rng, cfg.mask_probability, cfg.mask_ratio, cfg.mask_min_patches, cfg.mask_max_aspect
        )
        batch[f"masks_p{p}"] = torch.from_numpy(masks)
    return batch
