"""Eval fixtures: a fixed (seeded) pluto_tiny encoder and the real CRC patches with their labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

FIXED_MODEL_SEED = 0


@pytest.fixture(scope="session")
def fixed_tiny():
    """pluto_tiny with weights drawn under a fixed seed: the same encoder in every run."""
    import timm

    import pluto.models  # noqa: F401

    state = torch.random.get_rng_state()
    torch.manual_seed(FIXED_MODEL_SEED)
    try:
        return timm.create_model("pluto_tiny", pretrained=False).eval()
    finally:
        torch.random.set_rng_state(state)


@pytest.fixture(scope="session")
def crc_labeled(crc_patches):
    from pluto.eval.labeled import read_labels_csv

    return read_labels_csv(crc_patches, crc_patches / "labels.csv")


@pytest.fixture(scope="session")
def crc_cls(fixed_tiny, crc_labeled, tmp_path_factory):
    """CLS embeddings of the 32 real CRC patches by the fixed encoder (cached in a session folder)."""
    from pluto.eval.embeddings import extract_embeddings, input_px
    from pluto.eval.images import ImageFiles

    ds = ImageFiles(crc_labeled.paths, input_px(fixed_tiny))
    return extract_embeddings(fixed_tiny, ds, "cls", 16, cache_dir=tmp_path_factory.mktemp("emb"))


def write_images(folder: Path, names: list[str], size_px: int = 24, seed: int = 0, colors: dict | None = None) -> list[Path]:
    """Tiny RGB images (any suffix PIL can write); `colors` maps a name substring to an RGB base colour."""
    rng = np.random.default_rng(seed)
    out = []
    for name in names:
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        base = next((np.array(c) for k, c in (colors or {}).items() if k in name), np.array([200, 120, 180]))
        arr = np.clip(base + rng.integers(-20, 20, (size_px, size_px, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(p)
        out.append(p)
    return out


@pytest.fixture(scope="session")
def make_images():
    return write_images
