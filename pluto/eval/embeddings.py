"""Frozen-encoder embeddings: model resolution, batched extraction (bf16 autocast on CUDA), on-disk cache.

Modes (PLUTO-4 §4.1 and Table 2/3; Midnight Fig. 1B): "cls" = the CLS token; "cls+mean" = CLS
concatenated with the mean of the patch tokens (register tokens excluded); "patch_tokens" = the
patch-token grid (N, D, h, w) that segmentation decoders consume. Embeddings are cached under
`cache_dir` keyed by everything that decides the numbers (`cache_key`), written once (atomic
rename) and reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import timm
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pluto.atomic import write_with
from pluto.errors import CheckpointError, PlutoError
from pluto.eval.images import DIGEST_MEMO, TRANSFORM, digest_memo
from pluto.models import embed, load_model

log = logging.getLogger(__name__)

MODES = ("cls", "cls+mean", "patch_tokens")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ARCH_INIT_SEED = 0  # an architecture name is drawn under this seed: the same command gives the same random encoder


def resolve_model(spec: nn.Module | str | Path) -> nn.Module:
    """A model object, a `save_model` directory, a registered `models:/name@alias` URI, or a timm name (random init)."""
    if isinstance(spec, nn.Module):
        return spec
    text = str(spec)
    if text.startswith("models:/"):
        import mlflow

        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=text))
        found = sorted(local.rglob("model.safetensors"))
        if not found:
            raise CheckpointError(f"{text}: registered model has no model.safetensors artifact (downloaded to {local})")
        return load_model(found[0].parent)
    path = Path(text)
    if path.is_dir():
        return load_model(path)
    if text not in timm.list_models():
        raise PlutoError(f"{text}: neither a checkpoint directory, a models:/ URI nor a known architecture name")
    log.warning("%s: architecture name given, using a RANDOM-INITIALISED encoder (seed %d; a baseline, not a trained model)",
                text, ARCH_INIT_SEED)
    with torch.random.fork_rng(devices=[]):  # seeded on the CPU generator, the caller's RNG state left as it was
        torch.default_generator.manual_seed(ARCH_INIT_SEED)
        return timm.create_model(text, pretrained=False, num_classes=0)


def model_id(model: nn.Module) -> str:
    """sha256 of the weights (state-dict tensors in key order, raw bytes): the model part of every cache key."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def input_px(model: nn.Module) -> int:
    """Square input side in px: the patch embedding's fixed size when it has one, else the pretrained_cfg's."""
    fixed = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if fixed:
        return int(fixed[-1] if isinstance(fixed, (tuple, list)) else fixed)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return int(cfg.get("input_size", (3, 224, 224))[-1])


def _norm_stats(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


def normalise(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float, normalised with the model's pretrained_cfg mean/std (what the encoder sees)."""
    mean, std = (torch.tensor(v, device=batch.device).view(1, 3, 1, 1) * 255 for v in _norm_stats(model))
    return (batch.float() - mean) / std


def patch_size_of(model: nn.Module, patch_size: int | None) -> int:
    if patch_size is not None:
        return int(patch_size)
    if hasattr(model, "patch_sizes"):  # PLUTO (FlexiViT): its default patch size
        return int(model.patch_size)
    ps = model.patch_embed.patch_size
    return int(ps[0] if isinstance(ps, (tuple, list)) else ps)


def embed_batch(model: nn.Module, x: torch.Tensor, mode: str, patch_size: int) -> torch.Tensor:
    """One normalised batch -> embedding of `mode`; CLS modes go through `pluto.models.embed`."""
    if mode in ("cls", "cls+mean"):
        return embed(model, x, mode, patch_size).values
    if mode != "patch_tokens":
        raise PlutoError(f"unknown embedding mode {mode!r}; one of {MODES}")
    tokens = model.forward_features(x, patch_size=patch_size) if hasattr(model, "patch_sizes") else model.forward_features(x)
    patches = tokens[:, int(getattr(model, "num_prefix_tokens", 1)):]
    b, n, d = patches.shape
    side = int(round(n**0.5))
    if side * side != n:
        raise PlutoError(f"patch_tokens mode needs a square token grid, got {n} patch tokens")
    return patches.transpose(1, 2).reshape(b, d, side, side)


def precision(device: torch.device) -> str:
    """The arithmetic the encoder runs in: bf16 autocast on CUDA, fp32 elsewhere (embeddings differ at ~1e-2)."""
    return "bf16-autocast" if device.type == "cuda" else "fp32"


def cache_key(mid: str, fingerprint: str, mode: str, patch_size: int, px: int, *, mean: tuple[float, ...],
              std: tuple[float, ...], transform: str, precision: str) -> str:
    """Key of one cached embedding array: every input that changes its numbers. The weights (`model_id`),
    the data (`fingerprint`: content of the files), the pixels' geometry (`images.TRANSFORM`, renamed
    whenever the resize changes), the normalisation the model's pretrained_cfg gives, the precision,
    the embedding mode, patch size and input px."""
    blob = json.dumps({"model": mid, "data": fingerprint, "mode": mode, "patch_size": patch_size, "input_px": px,
                       "mean": [float(v) for v in mean], "std": [float(v) for v in std], "transform": transform,
                       "precision": precision}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _cache_file(model: nn.Module, dataset: Dataset, mode: str, ps: int, px: int, dev: torch.device, cache_dir: Path) -> Path:
    with digest_memo(Path(cache_dir) / DIGEST_MEMO):  # file digests hashed once per file version, across runs
        fingerprint = dataset.fingerprint
    mean, std = _norm_stats(model)
    key = cache_key(model_id(model), fingerprint, mode, ps, px, mean=mean, std=std, transform=TRANSFORM, precision=precision(dev))
    return Path(cache_dir) / f"emb-{key}.npy"


def extract_embeddings(
    model: nn.Module | str | Path,
    dataset: Dataset,
    mode: str = "cls",
    batch_size: int = 64,
    device: str = "cpu",
    *,
    patch_size: int | None = None,
    cache_dir: Path | None = None,
    num_workers: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Embed every item of `dataset` (uint8 CHW tensors, see `images.py`) with a frozen encoder.

    Returns float32 (N, D) for "cls", (N, 2D) for "cls+mean", (N, D, h, w) for "patch_tokens".
    With `cache_dir` and a dataset `fingerprint`, the result is stored once and reloaded after.
    """
    if mode not in MODES:
        raise PlutoError(f"unknown embedding mode {mode!r}; one of {MODES}")
    model = resolve_model(model)
    ps = patch_size_of(model, patch_size)
    px = input_px(model)
    dev = torch.device(device)
    cache_file = None
    if cache_dir is not None and hasattr(dataset, "fingerprint"):
        cache_file = _cache_file(model, dataset, mode, ps, px, dev, cache_dir)
        if cache_file.is_file():
            log.info("embeddings: cache hit %s", cache_file.name)
            return np.load(cache_file)
    model = model.eval().to(dev)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=dev.type == "cuda", persistent_workers=False,
                        prefetch_factor=4 if num_workers > 0 else None)
    chunks, done = [], 0
    with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision(dev) == "bf16-autocast"):
        for batch in loader:
            x = normalise(model, batch.to(dev, non_blocking=True))
            emb = embed_batch(model, x, mode, ps)
            chunks.append(emb.float().cpu())
            done += len(batch)
            if on_progress:
                on_progress(done, len(dataset))
    out = torch.cat(chunks).numpy() if chunks else np.zeros((0,), np.float32)
    if cache_file is not None:
        write_with(cache_file, lambda p: np.save(p, out))
    log.info("embeddings: %d items, mode %s, patch %d -> %s", len(dataset), mode, ps, tuple(out.shape))
    return out
