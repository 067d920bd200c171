"""PLUTO-4 models on timm: importing this registers pluto_tiny, pluto_4s and pluto_4g.

    m = timm.create_model("pluto_4s")
    tokens = m.forward_features(x, patch_size=8)          # (B, 1 + 4 + N, 384)
    e = embed(m, x, mode="cls+mean", patch_size=16)       # Embedding(values (B, 768), mode, patch_size)
    save_model(m, "out/"); m2 = load_model("out/")
"""

from pluto.models.dinov2_weights import checkpoint_filter_fn
from pluto.models.embedding import Embedding, EmbeddingMode, embed
from pluto.models.flexi_patch_embed import FlexiPatchEmbed
from pluto.models.model_io import load_model, read_config, save_model
from pluto.models.variants import PLUTO_ARCHS, pluto_4g, pluto_4s, pluto_tiny
from pluto.models.vision_transformer import PlutoViT

__all__ = [
    "PLUTO_ARCHS",
    "Embedding",
    "EmbeddingMode",
    "FlexiPatchEmbed",
    "PlutoViT",
    "checkpoint_filter_fn",
    "embed",
    "load_model",
    "pluto_4g",
    "pluto_4s",
    "pluto_tiny",
    "read_config",
    "save_model",
]
