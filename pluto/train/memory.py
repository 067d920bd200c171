"""Per-GPU memory estimate for one DINOv2-style training step, so a job does not OOM after queueing.

Modelled, not measured. Static state: fp32 master weights, fp32 gradients (shared with the DDP
buckets when `gradient_as_bucket_view=True`, PLUTO-4 paper §3.3; an extra copy otherwise), AdamW's
two fp32 moments, and the fp32 EMA teacher. Activations: what autograd keeps per token per block
of a pre-norm timm ViT under bf16 autocast with fused SDPA (no S x S attention matrix): the fp32
residual stream saved by both LayerNorms (2 x 4D bytes), the bf16 inputs/outputs saved by the
qkv/proj/fc1/fc2 matmuls, SDPA and the two LayerScales (18D bytes), and the MLP hidden state
(4 x fc1_out bytes, for GELU-MLP and SwiGLU alike); 2D-RoPE adds the rotated q and k (4D bytes)
that SDPA keeps besides the qkv output. fp32 training doubles the bf16 parts. With
activation checkpointing a block keeps only its fp32 input and one block is live for recompute.
Heads: per row (student crops' CLS for DINO, masked global patches for iBOT) the prototype logits
in fp32 for student log-softmax, teacher probabilities and Sinkhorn (4 x K x 4 bytes).
Calibration: DINOv2 ViT-g/14 at Midnight's 12 tiles/GPU (Karasikov et al. 2025) models at ~70 GB,
inside the 80 GB H100s they trained on; at PLUTO-4's 32 tiles/GPU (§3.2) it models at ~142 GB,
beyond a 141 GB H200, and at ~50 GB with activation checkpointing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from pluto.ssl.config import SSLConfig

GB = 1e9
CUDA_CONTEXT_BYTES = 1.5e9  # CUDA context + cuBLAS/NCCL workspaces, roughly what nvidia-smi shows idle
FRAGMENTATION = 0.10  # caching-allocator slack on activations whose shapes vary (multi-crop)


@dataclass(frozen=True)
class ArchShape:
    """What the memory model needs from a backbone; `arch_shape` reads it off a meta-device model."""

    arch: str
    n_params: int
    embed_dim: int
    depth: int
    fc1_out: int
    num_prefix_tokens: int
    patch_px: int
    rope: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ArchShape:
        return cls(**d)

    def tokens(self, crop_px: int, patch_px: int | None = None) -> int:
        """Tokens of one crop: prefix + ceil(crop/patch)^2 (timm pads a partial last patch)."""
        p = patch_px or self.patch_px
        side = -(-crop_px // p)
        return self.num_prefix_tokens + side * side


def arch_shape(arch: str, patch_px: int | None = None) -> ArchShape:
    """Build `arch` on the meta device (no memory, no weights) and read its dimensions."""
    import timm

    import pluto.models  # noqa: F401 - registers the pluto_* architectures with timm

    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=0)
    blocks = getattr(model, "blocks")
    patch = patch_px or getattr(model, "patch_size", None) or model.patch_embed.patch_size[0]
    return ArchShape(
        arch=arch,
        n_params=sum(p.numel() for p in model.parameters()),
        embed_dim=int(model.embed_dim),
        depth=len(blocks),
        fc1_out=int(blocks[0].mlp.fc1.out_features),
        num_prefix_tokens=int(model.num_prefix_tokens),
        patch_px=int(patch if isinstance(patch, int) else patch[0]),
        rope=any("rope" in name for name, _ in model.named_modules()),
    )


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU by component; `total` adds context and fragmentation slack."""

    weights: float
    grads: float
    optimizer: float
    teacher: float
    ddp_buckets: float
    activations: float
    heads: float
    overhead: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.teacher + self.ddp_buckets + self.activations + self.heads + self.overhead

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v / GB:.1f}" for k, v in asdict(self).items())
        return f"{self.total / GB:.1f} GB ({parts})"


def activation_bytes_per_token_layer(shape: ArchShape, precision: str) -> float:
    """Bytes autograd keeps per token per block (see module docstring for the itemisation)."""
    d, f = shape.embed_dim, shape.fc1_out
    half = 2 if precision == "bf16" else 4
    return 8 * d + (9 * d + 2 * f + (2 * d if shape.rope else 0)) * half


def head_params(ssl: SSLConfig, embed_dim: int) -> int:
    """Parameters of the DINO head (+ the iBOT head when separate): MLP, bottleneck, prototypes."""
    h = ssl.head_hidden_dim

    def head(b: int, n_prototypes: int) -> int:
        return embed_dim * h + h * h * max(ssl.head_n_layers - 2, 0) + h * b + h * (ssl.head_n_layers - 1) + b + b * n_prototypes

    dino = head(ssl.head_bottleneck_dim, ssl.n_prototypes)
    return dino + (head(ssl.ibot_head_bottleneck_dim or ssl.head_bottleneck_dim, ssl.ibot_n_prototypes) if ssl.ibot_separate_head else 0)


def estimate_memory(
    shape: ArchShape,
    batch_per_gpu: int,
    ssl: SSLConfig,
    *,
    precision: str = "bf16",
    activation_checkpointing: bool = False,
    gradient_as_bucket_view: bool = True,
) -> MemoryEstimate:
    """Estimate one rank's peak for one micro-batch of `batch_per_gpu` tiles cut into `ssl`'s crops.

    Worst case over the configured patch sizes (the smallest gives the most tokens). iBOT rows
    are the masked global patch tokens at the upper bound mask_probability x max mask_ratio.
    """
    patch = min(ssl.patch_sizes)
    p_student = shape.n_params + head_params(ssl, shape.embed_dim)
    crops = ((ssl.n_global_crops, ssl.global_crop_px), (ssl.n_local_crops, ssl.local_crop_px))
    tokens = sum(n * shape.tokens(px, patch) for n, px in crops) * batch_per_gpu
    per_token_layer = activation_bytes_per_token_layer(shape, precision)
    if activation_checkpointing:
        largest = max(n * shape.tokens(px, patch) for n, px in crops) * batch_per_gpu
        acts = tokens * shape.depth * 4 * shape.embed_dim + largest * per_token_layer
    else:
        acts = tokens * shape.depth * per_token_layer
    global_patches = shape.tokens(ssl.global_crop_px, patch) - shape.num_prefix_tokens
    ibot_rows = ssl.n_global_crops * batch_per_gpu * global_patches * ssl.mask_probability * ssl.mask_ratio[1]
    dino_rows = (ssl.n_global_crops + ssl.n_local_crops) * batch_per_gpu
    row_bytes = 4 * 4  # fp32 student logits, log-softmax, teacher probabilities, Sinkhorn buffer
    heads = dino_rows * ssl.n_prototypes * row_bytes + ibot_rows * ssl.ibot_n_prototypes * row_bytes
    heads += (dino_rows + ibot_rows) * 3 * ssl.head_hidden_dim * 4
    return MemoryEstimate(
        weights=4.0 * p_student,
        grads=4.0 * p_student,
        optimizer=8.0 * p_student,
        teacher=4.0 * p_student,
        ddp_buckets=0.0 if gradient_as_bucket_view else 4.0 * p_student,
        activations=float(acts),
        heads=float(heads),
        overhead=CUDA_CONTEXT_BYTES + FRAGMENTATION * float(acts + heads),
    )
