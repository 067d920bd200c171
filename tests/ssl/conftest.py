"""SSL fixtures: a tiny config, objectives on the real pluto_tiny backbone, real H&E tiles."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

import pluto.models  # noqa: F401  (registers pluto_tiny with timm)
from pluto.ssl import DinoV2Objective, MultiCropAugment, SSLConfig, collate_multicrop, ssl_preset

SMALL = dict(
    global_crop_px=64, local_crop_px=32, n_local_crops=2, head_hidden_dim=64, head_bottleneck_dim=32,
    n_prototypes=128, ibot_n_prototypes=128, patch_sizes=(16,),
)


@pytest.fixture()
def small_cfg() -> SSLConfig:
    """Demo preset shrunk further so one objective forward takes well under a second on 2 cores."""
    return SSLConfig(**{**ssl_preset("demo").to_dict(), **SMALL})


@pytest.fixture()
def make_objective():
    """cfg, seed -> DinoV2Objective on two fresh pluto_tiny backbones."""

    def make(cfg: SSLConfig, seed: int = 0) -> DinoV2Objective:
        torch.manual_seed(seed)
        return DinoV2Objective(timm.create_model("pluto_tiny"), timm.create_model("pluto_tiny"), cfg)

    return make


@pytest.fixture(scope="session")
def crc_tiles(crc_patches) -> list[np.ndarray]:
    """The 32 real 224-px CRC-VAL-HE-7K patches (0.5 um/px) as uint8 RGB arrays."""
    from PIL import Image

    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted((crc_patches / "images").glob("*.png"))]


@pytest.fixture()
def make_batch():
    """cfg, tiles, seed -> collated multi-crop batch (tiles at 0.5 um/px)."""

    def make(cfg: SSLConfig, tiles: list[np.ndarray], seed: int = 0) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        aug = MultiCropAugment(cfg)
        return collate_multicrop([aug(t, mpp=0.5, generator=gen) for t in tiles], cfg, np.random.default_rng(seed))

    return make
