"""FlexiViT patch embedding: one learned base kernel, resampled to every patch size it serves.

PLUTO-4S samples patch sizes from [8, 16, 32] per training step (PLUTO-4 paper §3.1, following
FlexiViT, Beyer et al. 2023). As in FlexiViT the learned ("underlying") kernel is 32 x 32, the
largest size served, and the kernel for patch size p is its pseudo-inverse ("PI") resize:
w_p = pinv(R^T) w_base, R the matrix that resizes a base-size patch to p x p (big_vision's
`resample_patchemb`; timm's `PatchEmbedResamplerFixedOrigSize`, the cached form of
`timm.layers.resample_patch_embed`, computes the same product). <x, w_base> = <R x, w_p> then holds
in the least-squares sense for p < base, so every size is a full-rank function of the base kernel;
a 16 x 16 base would leave the p = 32 kernel inside a 256-dim subspace of its 1024 entries.
FlexiViT builds R with the resize of its data pipeline; the PLUTO variants therefore use bilinear
with antialiasing, the resize of `pluto.ssl.multicrop`. Gradients flow into the base kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers.patch_embed import PatchEmbedResamplerFixedOrigSize
from torch import nn


class FlexiPatchEmbed(nn.Module):
    """Conv patch embedding whose stride/kernel follow the requested patch size.

    `interpolation` (antialiased) builds the resize matrix R; timm's default, bicubic, is kept as
    the default so models saved before the variants chose bilinear rebuild unchanged.

    `dynamic_img_pad` pads the image bottom/right with zeros up to a multiple of the patch size
    (timm's convention); without it an image side that the patch size does not divide is refused.
    """

    def __init__(
        self,
        base_patch_size: int,
        patch_sizes: tuple[int, ...],
        in_chans: int = 3,
        embed_dim: int = 384,
        dynamic_img_pad: bool = False,
        interpolation: str = "bicubic",
    ) -> None:
        super().__init__()
        self.base_patch_size = int(base_patch_size)
        self.patch_sizes = tuple(int(p) for p in patch_sizes)
        self.dynamic_img_pad = dynamic_img_pad
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.base_patch_size, stride=self.base_patch_size)
        self.resampler = PatchEmbedResamplerFixedOrigSize((self.base_patch_size, self.base_patch_size), interpolation, antialias=True)

    def kernel(self, patch_size: int) -> torch.Tensor:
        """The (D, C, p, p) kernel for `patch_size`, PI-resized from the base kernel."""
        return self.resampler(self.proj.weight, [patch_size, patch_size])

    def grid_size(self, height_px: int, width_px: int, patch_size: int) -> tuple[int, int]:
        """Token grid (rows, cols) for an image of height_px x width_px at `patch_size`."""
        if patch_size not in self.patch_sizes:
            raise ValueError(f"patch size {patch_size} not in this model's patch sizes {self.patch_sizes}")
        if self.dynamic_img_pad:
            return math.ceil(height_px / patch_size), math.ceil(width_px / patch_size)
        if height_px % patch_size or width_px % patch_size:
            raise ValueError(
                f"image {height_px}x{width_px} px is not divisible by patch size {patch_size} "
                "(build the model with dynamic_img_pad=True to pad instead)"
            )
        return height_px // patch_size, width_px // patch_size

    def forward(self, x: torch.Tensor, patch_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images (B, C, H, W) -> tokens (B, rows*cols, D) and the grid (rows, cols)."""
        rows, cols = self.grid_size(x.shape[-2], x.shape[-1], patch_size)
        pad_h, pad_w = rows * patch_size - x.shape[-2], cols * patch_size - x.shape[-1]
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        x = F.conv2d(x, self.kernel(patch_size), self.proj.bias, stride=patch_size)
        return x.flatten(2).transpose(1, 2), (rows, cols)

    def prewarm(self, device: torch.device | str | None = None) -> None:
        """Build the resize matrices for every patch size now (before torch.compile / timing)."""
        self.resampler.prewarm(self.patch_sizes, device=device)
