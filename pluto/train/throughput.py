"""FLOPs of one DINOv2 training sample and the model FLOPs utilisation (MFU) they imply.

Per token per block, forward: 2 x (4D^2 + 2 D F) for the qkv/proj/MLP matmuls (F = fc1 width,
SwiGLU's fc1 is 2x wider and its fc2 half as wide, which the same 2DF covers to within 2%) plus
4 S D for attention over S tokens. Training a sample: student forward + backward (3x forward) on
all crops, teacher forward on the global crops, heads on the CLS tokens and the iBOT-masked
patches. For ViT-S/16 with 2x224 + 8x96 crops this gives ~130 GFLOP, as DESIGN.md's reference.
"""

from __future__ import annotations

from pluto.ssl.config import SSLConfig
from pluto.train.memory import ArchShape, head_params


def _backbone_fwd_flops(shape: ArchShape, tokens: int) -> float:
    d, f = shape.embed_dim, shape.fc1_out
    per_token = 2 * (4 * d * d + 2 * d * f) + 4 * tokens * d
    return float(per_token * tokens * shape.depth)


def train_flops_per_image(shape: ArchShape, ssl: SSLConfig, patch_px: int | None = None) -> float:
    """Training FLOPs per tile (all its crops) at `patch_px` (default: the model's)."""
    p = patch_px or shape.patch_px
    g_tok, l_tok = shape.tokens(ssl.global_crop_px, p), shape.tokens(ssl.local_crop_px, p)
    student = ssl.n_global_crops * _backbone_fwd_flops(shape, g_tok) + ssl.n_local_crops * _backbone_fwd_flops(shape, l_tok)
    teacher = ssl.n_global_crops * _backbone_fwd_flops(shape, g_tok)
    masked = ssl.n_global_crops * (g_tok - shape.num_prefix_tokens) * ssl.mask_probability * sum(ssl.mask_ratio) / 2
    head_rows_student = ssl.n_global_crops + ssl.n_local_crops + masked
    head_rows_teacher = ssl.n_global_crops + masked
    heads = 2 * head_params(ssl, shape.embed_dim) * (3 * head_rows_student + head_rows_teacher)
    return 3 * student + teacher + heads


def mfu(flops_per_image: float, images_per_s: float, n_gpus: int, peak_tflops: float) -> float:
    """Achieved FLOP/s over the GPUs' dense bf16 peak."""
    return flops_per_image * images_per_s / (n_gpus * peak_tflops * 1e12)
