"""Slides fixtures: real tissue from the bundled Aperio slide, written into generic pyramidal TIFFs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
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


@dataclass(frozen=True)
class FormatCase:
    """A slide written from real tissue in one format: its path, true pixels per level, expected reader."""

    path: Path
    truth: tuple[np.ndarray, ...]  # level arrays as written (before any codec)
    reader: str  # SlideHandle.reader expected to serve it
    lossless: bool


_APERIO = "Aperio Image Library v12.0.15\r\n{w}x{h} [0,0 {w}x{h}] (256x256) J2K/{kind} Q=90|AppMag = 20|MPP = 0.5"
_T = 256


def _ycbcr(rgb: np.ndarray) -> np.ndarray:
    """JPEG/JFIF full-range BT.601 YCbCr, as TIFF YCbCr and Aperio 33003 store it."""
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)[..., [0, 2, 1]]


def _tiles(a: np.ndarray, encode) -> Iterator[bytes]:
    for y in range(0, a.shape[0], _T):
        for x in range(0, a.shape[1], _T):
            tile = np.zeros((_T, _T, a.shape[2]), np.uint8)
            part = a[y : y + _T, x : x + _T]
            tile[: part.shape[0], : part.shape[1]] = part
            yield encode(tile)


def _write(path: Path, levels: list[np.ndarray], stored=lambda a: a, *, resolution: bool = True, **kw) -> Path:
    """One page per level (reduced ones flagged), tiled 256 unless rowsperstrip is given."""
    import tifffile

    with tifffile.TiffWriter(path) as tif:
        for k, level in enumerate(levels):
            data = stored(level)
            res = {"resolution": (1e4 / (0.5 * 2**k),) * 2, "resolutionunit": "CENTIMETER"} if resolution else {}
            layout = {} if "rowsperstrip" in kw else {"tile": (_T, _T)}
            encode = kw.get("encode")
            args = {k2: v for k2, v in kw.items() if k2 not in ("encode", "description")}
            if encode is not None:
                args.update(data=_tiles(data, encode), shape=data.shape, dtype=np.uint8)
            else:
                args.update(data=data)
            tif.write(**args, **layout, **res, subfiletype=0 if k == 0 else 1, metadata=None,
                      description=kw.get("description", "").format(w=level.shape[1], h=level.shape[0]) or None)
    return path


@pytest.fixture(scope="session")
def format_slides(tmp_path_factory, cmu_rgb: np.ndarray) -> dict[str, FormatCase]:
    """The format matrix: each codec and colour space a cohort brings, 1000 x 750 px of real tissue, 2 levels."""
    import imagecodecs
    import tifffile

    d = tmp_path_factory.mktemp("formats")
    level0 = np.ascontiguousarray(cmu_rgb[700:1450, 500:1500])  # odd sizes: edge tiles are partial
    levels = [level0, cv2.resize(level0, (500, 375), interpolation=cv2.INTER_AREA)]
    cmyk = lambda a: np.concatenate([255 - a, np.zeros(a.shape[:2] + (1,), np.uint8)], axis=-1)  # noqa: E731
    j2k = lambda a: imagecodecs.jpeg2k_encode(a, level=95, codecformat="J2K", mct=False)  # noqa: E731
    cases = {
        "jpeg_ycbcr": (_write(d / "jpeg_ycbcr.tiff", levels, photometric="rgb", compression="jpeg", compressionargs={"level": 95}), "openslide+direct", False),
        "aperio_j2k_ycbcr": (_write(d / "aperio_j2k_ycbcr.svs", levels, _ycbcr, photometric="rgb", compression=33003, encode=j2k,
                                    description=_APERIO.replace("{kind}", "YUV16"), resolution=False), "openslide", False),
        "aperio_j2k_rgb": (_write(d / "aperio_j2k_rgb.svs", levels, photometric="rgb", compression=33005, encode=j2k,
                                  description=_APERIO.replace("{kind}", "RGB"), resolution=False), "openslide+direct", False),
        "j2k": (_write(d / "j2k.tiff", levels, photometric="rgb", compression="jpeg2000", compressionargs={"level": 95}), "tifffile", False),
        "webp": (_write(d / "webp.tiff", levels, photometric="rgb", compression="webp", compressionargs={"level": 95}), "tifffile", False),
        "lzw_rgb": (_write(d / "lzw_rgb.tiff", levels, photometric="rgb", compression="lzw", predictor=True), "openslide+direct", True),
        "lzw_ycbcr": (_write(d / "lzw_ycbcr.tiff", levels, _ycbcr, photometric="ycbcr", subsampling=(1, 1), compression="lzw"), "openslide", False),
        "lzw_cmyk": (_write(d / "lzw_cmyk.tiff", levels, cmyk, photometric="separated", compression="lzw"), "openslide", True),
        "deflate": (_write(d / "deflate.tiff", levels, photometric="rgb", compression="adobe_deflate"), "openslide+direct", True),
        "zstd": (_write(d / "zstd.tiff", levels, photometric="rgb", compression="zstd"), "openslide+direct", True),
        "none": (_write(d / "none.tiff", levels, photometric="rgb"), "openslide+direct", True),
        "stripped": (_write(d / "stripped.tiff", levels[:1], photometric="rgb", compression="lzw", rowsperstrip=16), "tifffile", True),
        "packbits_stripped": (_write(d / "packbits_stripped.tiff", levels[:1], photometric="rgb", compression="packbits", rowsperstrip=15),
                              "tifffile", True),  # as the bundled MoNuSeg regions are stored
        "packbits_tiled": (_write(d / "packbits_tiled.tiff", levels, photometric="rgb", compression="packbits"), "openslide+direct", True),
    }
    ome = d / "subifd.ome.tiff"  # pyramid in SubIFDs, resolution only in the OME-XML (no TIFF resolution tags)
    with tifffile.TiffWriter(ome, bigtiff=True) as tif:
        tif.write(levels[0], tile=(_T, _T), photometric="rgb", compression="jpeg", compressionargs={"level": 95}, subifds=1,
                  metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"})
        tif.write(levels[1], tile=(_T, _T), photometric="rgb", compression="jpeg", compressionargs={"level": 95}, subfiletype=1)
    cases["ome_subifd"] = (ome, "tifffile", False)
    return {name: FormatCase(path, tuple(levels[: 1 if "stripped" in name else 2]), reader, lossless)
            for name, (path, reader, lossless) in cases.items()}
