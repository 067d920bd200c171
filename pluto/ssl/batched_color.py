"""Colour augmentations on a batch of crops, each with its own random factors, on any device.

torchvision's functional ops take one factor per call; a multi-crop batch needs one per crop, and
on a GPU one call per crop would be launch-bound. These functions apply torchvision's formulas
(`adjust_brightness/contrast/saturation/hue`, `gaussian_blur` with reflect padding, `solarize`)
to (N, 3, H, W) float images in [0, 1] with per-image factors; the tests hold them equal to the
torchvision op applied image by image. `MultiCropAugment` uses them for the crops of one tile in
a DataLoader worker and for a whole micro-batch on the device, so both paths share one code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv

BLUR_KERNEL_PX = 9  # DINOv2's GaussianBlur kernel size
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


def _per_image(f: torch.Tensor) -> torch.Tensor:
    return f.view(-1, 1, 1, 1)


def _blend(img: torch.Tensor, other: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    f = _per_image(f)
    return (f * img + (1 - f) * other).clamp_(0.0, 1.0)


def adjust(img: torch.Tensor, op: str, f: torch.Tensor) -> torch.Tensor:
    """One of JITTER_OPS with factor f[i] for image i (hue: shift in turns, the others: blend ratio)."""
    if op == "brightness":
        return (img * _per_image(f)).clamp_(0.0, 1.0)
    if op == "contrast":
        mean = TF.rgb_to_grayscale(img).mean(dim=(-3, -2, -1), keepdim=True)
        return _blend(img, mean, f)
    if op == "saturation":
        return _blend(img, TF.rgb_to_grayscale(img), f)
    if op == "hue":
        h, s, v = _rgb_to_hsv(img).unbind(dim=-3)
        h = (h + f.view(-1, 1, 1)).remainder_(1.0)
        return _hsv_to_rgb(torch.stack((h, s, v), dim=-3))
    raise ValueError(f"unknown colour op {op!r}; expected one of {JITTER_OPS}")


def color_jitter(img: torch.Tensor, factors: torch.Tensor, order: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
    """ColorJitter with per-image factors (N, 4) in JITTER_OPS order, op order (N, 4) a permutation
    per image, applied where `on` (N,) bool."""
    out = img.clone()
    for pos in range(len(JITTER_OPS)):
        for j, op in enumerate(JITTER_OPS):
            sel = torch.nonzero(on & (order[:, pos] == j)).flatten()
            if sel.numel():
                out[sel] = adjust(out[sel], op, factors[sel, j])
    return out


def gaussian_blur(img: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur, 9 px kernel, reflect padding, sigma (N,) per image (> 0)."""
    n, c, h, w = img.shape
    x = torch.arange(BLUR_KERNEL_PX, device=img.device, dtype=img.dtype) - (BLUR_KERNEL_PX - 1) / 2
    k = torch.exp(-0.5 * (x / sigma.to(img).view(-1, 1)) ** 2)
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (N*C, K)
    pad = BLUR_KERNEL_PX // 2
    flat = F.pad(img.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    flat = F.conv2d(flat, k.view(n * c, 1, 1, BLUR_KERNEL_PX), groups=n * c)
    flat = F.conv2d(flat, k.view(n * c, 1, BLUR_KERNEL_PX, 1), groups=n * c)
    return flat.view(n, c, h, w)


def apply_where(img: torch.Tensor, on: torch.Tensor, fn, *per_image: torch.Tensor) -> torch.Tensor:
    """img with `fn(img[sel], *(p[sel] ...))` written back at the images where `on` (N,) is true."""
    sel = torch.nonzero(on).flatten()
    if sel.numel() == 0:
        return img
    out = img.clone()
    out[sel] = fn(img[sel], *(p[sel] for p in per_image))
    return out
