"""Slides fixtures: real tissue from the bundled Aperio slide, written into generic pyramidal TIFFs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pluto.slides import clear_pool, open_slide, write_pyramid


@pytest.fixture(scope="session")
def cmu_rgb(cmu_svs: Path) -> np.ndarray:
    """Level 0 of the real slide, (2967, 2220, 3) uint8."""
    with open_slide(cmu_svs) as h:
        return h.read_level(0, 0, 0, h.info.width, h.info.height)


@pytest.fixture(scope="session")
def pyramids(tmp_path_factory, cmu_rgb: np.ndarray) -> dict[str, Path]:
    """Pyramids of real tissue. Lossless (zlib) ones check geometry exactly; one JPEG like scanners write."""
    d = tmp_path_factory.mktemp("pyramids")
    return {
        # 0.25 um/px, 4 levels x2, odd non-square level 0: OpenSlide reports downsamples like 1.9992
        "odd": write_pyramid(d / "odd.tiff", cmu_rgb[:2965, :2219], 0.25, 4, tile_px=128, compression="zlib"),
        "ratio3": write_pyramid(d / "ratio3.tiff", cmu_rgb, 0.25, 3, level_ratio=3, compression="zlib"),
        "jpeg": write_pyramid(d / "jpeg.tiff", cmu_rgb, 0.25, 3),
        "no_mpp": write_pyramid(d / "no_mpp.tiff", cmu_rgb[:1024, :1536], None, 2),
    }


@pytest.fixture(autouse=True)
def _fresh_pool():
    clear_pool()
    yield
    clear_pool()
