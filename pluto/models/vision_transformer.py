"""PLUTO-4 vision transformer: FlexiViT patch embedding, 2D RoPE on patch tokens, registers, LayerScale.

One class serves every variant (timm style); `variants.py` registers the sized versions.
Architecture facts (PLUTO-4 paper §3.1-3.2): FlexiViT patch sizes [8, 16, 32] for PLUTO-4S,
2D-RoPE "consistent with the positional encoding formulation used in (Siméoni et al., 2025)"
instead of PLUTO's absolute position embedding, register tokens (Darcet et al., 2024), 4 of them
for PLUTO-4G. The RoPE is timm's DINOv3 port (`RotaryEmbeddingDinoV3`): patch-centre coordinates
normalised to [-1, 1] over the token grid, so one model serves every patch size and image size;
periods `base ** (4i / head_dim)` with base 100 as DINOv3. It rotates patch tokens only: CLS and
registers carry no position. Blocks are timm's `EvaBlock` (fused qkv, SDPA attention, optional
SwiGLU FFN, LayerScale).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from timm.layers import LayerNorm, trunc_normal_
from timm.layers.pos_embed_sincos import RotaryEmbeddingDinoV3
from timm.models.eva import EvaBlock
from torch import nn
from torch.utils.checkpoint import checkpoint

from pluto.models.flexi_patch_embed import FlexiPatchEmbed


class PlutoViT(nn.Module):
    """ViT backbone returning normed [CLS, registers, patches] tokens at any supported patch size.

    Constructor arguments are recorded in `arch_kwargs` so `save_model` can rebuild the model.
    `rope_shift_coords` / `rope_jitter_coords` / `rope_rescale_coords` are DINOv3's train-time
    coordinate augmentations (off by default; DINOv3 trains with rescale 2).
    Stochastic depth: block i drops its residual branches with rate `drop_path_rate * i / (depth - 1)`
    (timm's and dinov2's linear rule), or `drop_path_rate` in every block with `drop_path_uniform`
    (what dinov2's configs set: `student.drop_path_uniform: true`). `flexi_interpolation` is the
    resize behind the FlexiViT PI-resize (`FlexiPatchEmbed`).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        patch_sizes: tuple[int, ...] = (8, 16, 32),
        base_patch_size: int | None = None,
        in_chans: int = 3,
        num_classes: int = 0,
        global_pool: str = "token",
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        swiglu_mlp: bool = False,
        qkv_bias: bool = True,
        num_reg_tokens: int = 4,
        init_values: float | None = 1e-5,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = False,
        rope_temperature: float = 100.0,
        rope_shift_coords: float | None = None,
        rope_jitter_coords: float | None = None,
        rope_rescale_coords: float | None = None,
        dynamic_img_pad: bool = False,
        flexi_interpolation: str = "bicubic",
    ) -> None:
        super().__init__()
        patch_sizes = tuple(int(p) for p in patch_sizes)
        if patch_size not in patch_sizes:
            raise ValueError(f"default patch size {patch_size} not in patch_sizes {patch_sizes}")
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        self.arch_kwargs: dict[str, Any] = {
            k: v for k, v in locals().items() if k not in ("self", "__class__")
        }
        self.arch_kwargs["patch_sizes"] = list(patch_sizes)
        self.img_size = img_size
        self.patch_size = int(patch_size)
        self.patch_sizes = patch_sizes
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.embed_dim = self.num_features = self.head_hidden_size = embed_dim
        self.num_reg_tokens = num_reg_tokens
        self.num_prefix_tokens = 1 + num_reg_tokens
        self.grad_checkpointing = False
        self._rope_cache: dict[tuple[tuple[int, int], torch.device], torch.Tensor] = {}

        self.patch_embed = FlexiPatchEmbed(
            base_patch_size or patch_size, patch_sizes, in_chans, embed_dim, dynamic_img_pad, flexi_interpolation
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.reg_token = nn.Parameter(torch.zeros(1, num_reg_tokens, embed_dim)) if num_reg_tokens else None
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.rope = RotaryEmbeddingDinoV3(
            dim=embed_dim // num_heads,
            temperature=rope_temperature,
            normalize_coords="separate",
            rotate_half=True,
            shift_coords=rope_shift_coords,
            jitter_coords=rope_jitter_coords,
            rescale_coords=rope_rescale_coords,
        )
        norm_layer = partial(LayerNorm, eps=1e-6)
        dpr = [drop_path_rate if drop_path_uniform else drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            EvaBlock(
                dim=embed_dim,
                num_heads=num_heads,
                qkv_bias=qkv_bias,
                mlp_ratio=mlp_ratio,
                swiglu_mlp=swiglu_mlp,
                num_prefix_tokens=self.num_prefix_tokens,
                rotate_half=True,
                init_values=init_values,
                drop_path=dpr[i],
                norm_layer=norm_layer,
            )
            for i in range(depth)
        )
        self.norm = norm_layer(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        """DINOv2 init: tokens ~N(0, 1e-6), mask token 0, linear layers truncated normal 0.02."""
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.reg_token is not None:
            nn.init.normal_(self.reg_token, std=1e-6)
        nn.init.zeros_(self.mask_token)  # no draw: construction is unchanged, and a re-init (random-init twin) covers it
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "reg_token", "mask_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for timm's layer-wise lr decay (`param_groups_layer_decay`)."""
        return dict(
            stem=r"^cls_token|^reg_token|^mask_token|^patch_embed",
            blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in backward (activation checkpointing), trading ~1/3 more compute for memory."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """`reset_classifier(0)` leaves a backbone whose forward returns the pooled embedding."""
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def grid_size(self, height_px: int, width_px: int, patch_size: int | None = None) -> tuple[int, int]:
        """Patch-token grid (rows, cols) for an image size; N = rows * cols is the masks' width."""
        return self.patch_embed.grid_size(height_px, width_px, patch_size or self.patch_size)

    def _rope_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        """(rows*cols, 2*head_dim) sin/cos table; cached per grid unless coordinates are augmented.

        The cache is a plain dict (derived state: not saved, not broadcast by DDP), keyed by device,
        and built outside inference mode so a table made during evaluation can serve training.
        """
        if self.training and self.rope.aug_active:
            return self.rope.get_embed(list(grid))
        key = (grid, self.rope.periods.device)
        if key not in self._rope_cache:
            with torch.inference_mode(False):
                self._rope_cache[key] = self.rope.get_embed(list(grid))
        return self._rope_cache[key]

    def forward_features(
        self, x: torch.Tensor, patch_size: int | None = None, masks: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Images (B, C, H, W) -> final-normed tokens (B, 1 + R + N, D): CLS, R registers, N patches.

        `masks` (B, N) bool replaces those patch tokens by the learned mask token before the
        blocks (iBOT student input).
        """
        x, grid = self.patch_embed(x, patch_size or self.patch_size)
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        prefix = [self.cls_token.expand(x.shape[0], -1, -1)]
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(x.shape[0], -1, -1))
        x = torch.cat([*prefix, x], dim=1)
        rope = self._rope_embed(grid)
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, rope, use_reentrant=False)
            else:
                x = blk(x, rope=rope)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens -> CLS (global_pool 'token') or mean patch token ('avg'); logits unless pre_logits."""
        x = x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix_tokens :].mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor, patch_size: int | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, patch_size=patch_size))
