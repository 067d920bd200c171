"""The format matrix: every codec and colour space a cohort brings is read with its true pixels.

Each fixture is written by the suite from the bundled slide's tissue, so the true pixels of every
level are known; a silent colour error (YCbCr or CMYK read as RGB: mean error 75-224) fails here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pluto.errors import QuarantineReason
from pluto.slides import ingest, open_slide, preflight, read_tile
from pluto.slides.decode_check import MAX_ABS_DIFF, MAX_MEAN_ABS_DIFF, decode_difference

FORMATS = ["jpeg_ycbcr", "aperio_j2k_ycbcr", "aperio_j2k_rgb", "j2k", "webp", "lzw_rgb", "lzw_ycbcr", "lzw_cmyk",
           "deflate", "zstd", "none", "stripped", "packbits_stripped", "packbits_tiled", "ome_subifd"]  # fmt: skip


def _errors(read: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(mean |error|, largest |mean error| of one channel: a colour shift even where noise averages out)."""
    diff = read.astype(np.float64) - truth
    return float(np.abs(diff).mean()), float(np.abs(diff.reshape(-1, 3).mean(axis=0)).max())


@pytest.mark.parametrize("name", FORMATS)
def test_format_reads_true_pixels(format_slides, name: str) -> None:
    case = format_slides[name]
    with open_slide(case.path) as h:
        assert h.reader == case.reader
        assert (h.info.levels, h.info.mpp, h.info.mpp_source) == (len(case.truth), pytest.approx(0.5), "header")
        for level, truth in enumerate(case.truth):
            read = h.read_level(level, 0, 0, truth.shape[1], truth.shape[0])
            mae, bias = _errors(read, truth)
            if case.lossless:
                assert mae == 0, f"level {level}"
            else:  # codec noise only (4:2:0 chroma of JPEG costs ~3.7): small, and no channel shifted
                assert mae < 5.0 and bias < 0.6, f"level {level}: mean error {mae:.2f}, channel bias {bias:.2f}"
        tile = read_tile(h, 200, 100, 1.0, 128)  # served by level 1 where there is one, area-resized otherwise
        ref = case.truth[-1] if len(case.truth) > 1 else None
        if ref is not None:
            assert _errors(tile, ref[50:178, 100:228])[0] < 5.0
        found = decode_difference(h)
    if case.reader == "openslide":
        assert found is None  # OpenSlide decodes every read itself
    else:
        mean, peak, _ = found
        assert mean <= MAX_MEAN_ABS_DIFF and peak <= MAX_ABS_DIFF
    info, err, _ = preflight(case.path, None, (0.05, 50.0), 1_000_000)
    assert err is None and info is not None


def test_ome_pyramid_from_subifds_and_physical_size(format_slides) -> None:
    import openslide
    import tifffile

    path = format_slides["ome_subifd"].path
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].resolutionunit == 1 and len(tif.pages) == 1  # no physical unit; level 1 only in a SubIFD
    with openslide.OpenSlide(path) as osr:  # what OpenSlide alone would see: one level, no MPP
        assert len(osr.level_dimensions) == 1 and "openslide.mpp-x" not in osr.properties
    with open_slide(path) as h:
        assert h.info.level_dims == ((1000, 750), (500, 375)) and h.info.vendor == "ome-tiff"
        assert (h.info.mpp_x, h.info.mpp_y) == (0.5, 0.5)


def test_direct_decode_that_disagrees_is_quarantined(tmp_path: Path, format_slides) -> None:
    """JFIF (YCbCr) JPEG tiles in a TIFF tagged RGB: libtiff (OpenSlide) and libjpeg disagree by ~75."""
    import imagecodecs
    import tifffile

    truth = format_slides["none"].truth[0]
    path = tmp_path / "jfif_in_rgb.tiff"

    def tiles():
        for y in range(0, truth.shape[0], 256):
            for x in range(0, truth.shape[1], 256):
                tile = np.full((256, 256, 3), 255, np.uint8)
                part = truth[y : y + 256, x : x + 256]
                tile[: part.shape[0], : part.shape[1]] = part
                yield imagecodecs.jpeg8_encode(tile, level=90)  # JFIF marker, YCbCr inside

    with tifffile.TiffWriter(path) as tif:
        tif.write(tiles(), shape=truth.shape, dtype=np.uint8, tile=(256, 256), compression="jpeg", photometric="rgb",
                  compressionargs={"outcolorspace": "RGB"}, subsampling=(1, 1), resolution=(2e4, 2e4), resolutionunit="CENTIMETER", metadata=None)
    with open_slide(path) as h:
        assert h.reader == "openslide+direct"
        mean, peak, name = decode_difference(h)
    assert name == "OpenSlide" and mean > 50 and peak > 100
    info, err, _ = preflight(path, None, (0.05, 50.0), 1_000_000)
    assert info is not None and err.reason is QuarantineReason.decode_mismatch
    assert "differs from OpenSlide" in err.detail


def test_unproven_colour_space_without_openslide_is_refused(tmp_path: Path, format_slides) -> None:
    """A stripped YCbCr-LZW TIFF: OpenSlide does not open it and no decoder here is proven for it."""
    import cv2
    import tifffile

    truth = format_slides["none"].truth[0]
    path = tmp_path / "stripped_ycbcr.tiff"
    ycbcr = cv2.cvtColor(truth, cv2.COLOR_RGB2YCrCb)[..., [0, 2, 1]]
    tifffile.imwrite(path, ycbcr, photometric="ycbcr", subsampling=(1, 1), compression="lzw", rowsperstrip=16,
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER", metadata=None)
    info, err, _ = preflight(path, None, (0.05, 50.0), 1_000_000)
    assert info is None and err.reason is QuarantineReason.unreadable
    assert "LZW/YCBCR" in err.detail and "no decoder proven" in err.detail


def test_ingest_of_the_format_matrix(tmp_path: Path, format_slides) -> None:
    """Every format is catalogued ok with its MPP and levels; the matrix holds no silent colour error to ingest."""
    import shutil

    from pluto.slides import ingest

    src = tmp_path / "cohort"
    src.mkdir()
    for name, case in format_slides.items():
        shutil.copy(case.path, src / case.path.name)
    cat = ingest(str(src), tmp_path / "work", workers=2).set_index("file_name")
    assert (cat["status"] == "ok").all(), cat.loc[cat["status"] != "ok", ["status", "detail"]].to_dict("index")
    assert cat.loc["subifd.ome.tiff", ["levels", "mpp_x", "mpp_source"]].tolist() == [2, 0.5, "header"]
    assert cat.loc["stripped.tiff", "vendor"] == "tiff" and cat.loc["aperio_j2k_ycbcr.svs", "vendor"] == "aperio"


def test_dicom_series_is_one_catalog_row(tmp_path: Path, openslide_fixtures: Path, cmu_svs: Path) -> None:
    """The two instances of the bundled DICOM series are one slide (OpenSlide reads it from either)."""
    import hashlib
    import shutil

    from pluto.slides import ingest

    src = tmp_path / "cohort"
    (src / "series").mkdir(parents=True)
    for name in ("boxes_0.dcm", "boxes_1.dcm"):
        shutil.copy(openslide_fixtures / name, src / "series" / name)
    shutil.copy(cmu_svs, src / cmu_svs.name)
    cat = ingest(str(src), tmp_path / "work").set_index("file_name")
    assert sorted(cat.index) == ["CMU-1-Small-Region.svs", "boxes_0.dcm"]
    dicom = cat.loc["boxes_0.dcm"]
    files = [src / "series" / n for n in ("boxes_0.dcm", "boxes_1.dcm")]
    ids = sorted(hashlib.sha256(f.read_bytes()).hexdigest() for f in files)
    assert (dicom.status, dicom.vendor, dicom.width, dicom.mpp_x) == ("ok", "dicom", 16, 0.499)
    assert dicom.bytes == sum(f.stat().st_size for f in files)
    assert dicom.slide_id == hashlib.sha256("\n".join(ids).encode()).hexdigest()
    with open_slide(dicom.path) as h:
        assert h.reader == "openslide" and h.series_uid


def test_bundled_monuseg_regions_ingest_with_their_mpp_overrides(tmp_path: Path, shared_data: Path) -> None:
    """Real stripped PackBits and LZW TIFFs (20 MoNuSeg H&E regions): every one is read, none quarantined."""
    src = shared_data / "regions_monuseg"
    catalog = ingest(str(src / "images"), tmp_path / "work", mpp_overrides_csv=src / "mpp_overrides.csv")
    assert len(catalog) == 20 and (catalog["status"] == "ok").all(), catalog.loc[catalog["status"] != "ok", ["file_name", "detail"]]
    assert set(catalog["mpp_source"]) == {"override"}
