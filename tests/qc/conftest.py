"""QC test fixtures: images from shared/data as RGB uint8 arrays, and a one-slide work dir."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest


def load_rgb(path: Path) -> np.ndarray:
    """RGB uint8 H x W x 3 (alpha dropped)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, f"cannot read {path}"
    return np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))


@pytest.fixture(scope="session")
def crc_images(crc_patches: Path) -> dict[str, np.ndarray]:
    labels = pd.read_csv(crc_patches / "labels.csv")
    return {f"{r.label}/{Path(r.filename).name}": load_rgb(crc_patches / r.filename) for r in labels.itertuples()}


@pytest.fixture(scope="session")
def qc_work(tmp_path_factory, cmu_svs: Path) -> Path:
    """Work dir with catalog.parquet of the real CMU svs, built by pluto.slides.ingest."""
    from pluto.slides import ingest

    work = tmp_path_factory.mktemp("qc-work")
    src = work / "src"
    src.mkdir()
    shutil.copy(cmu_svs, src / cmu_svs.name)
    ingest(str(src), work, workers=1)
    return work


@pytest.fixture(scope="session")
def rgb():
    """The image loader, as a fixture (test modules here are not a package)."""
    return load_rgb
