"""Bad slide files: each is refused with its own reason by the readers and quarantined by ingest,
while the good slides of the same batch are catalogued and earlier catalog rows are kept."""

from __future__ import annotations

import resource
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pluto.errors import PlutoError, QuarantineReason, SlideError
from pluto.slides import clear_pool, get_handle, ingest, open_slide, read_tile, slide_info, write_pyramid

CLAIMED_PX = 10**7  # header width and height of the "huge" TIFF: 3e14 bytes of RGB if anyone allocated it


def write_huge_header_tiff(path: Path, width_px: int, height_px: int, mpp: float = 0.25) -> Path:
    """A 200-byte tiled RGB TIFF whose one tile is declared width x height px (a lying header).

    Written by hand: tifffile would allocate the image it describes.
    """
    data = zlib.compress(np.full((16, 16, 3), 200, np.uint8).tobytes())
    bps_at = 8 + len(data)
    res_at = bps_at + 6
    ifd_at = res_at + 8
    px_per_cm = round(1e4 / mpp)

    def entry(tag: int, typ: int, count: int, value: int, inline: bytes | None = None) -> bytes:
        return struct.pack("<HHI", tag, typ, count) + (inline.ljust(4, b"\0") if inline is not None else struct.pack("<I", value))

    short = lambda v: struct.pack("<H", v)  # noqa: E731
    entries = [
        entry(256, 4, 1, width_px), entry(257, 4, 1, height_px), entry(258, 3, 3, bps_at), entry(259, 3, 1, 0, short(8)),
        entry(262, 3, 1, 0, short(2)), entry(277, 3, 1, 0, short(3)), entry(282, 5, 1, res_at), entry(283, 5, 1, res_at),
        entry(284, 3, 1, 0, short(1)), entry(296, 3, 1, 0, short(3)), entry(322, 4, 1, width_px), entry(323, 4, 1, height_px),
        entry(324, 4, 1, 8), entry(325, 4, 1, len(data)),
    ]  # fmt: skip
    path.write_bytes(
        b"II*\0" + struct.pack("<I", ifd_at) + data + short(8) * 3 + struct.pack("<II", px_per_cm, 1)
        + short(len(entries)) + b"".join(entries) + struct.pack("<I", 0)
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def bad_slides(tmp_path_factory, cmu_svs: Path) -> dict[str, Path]:
    """name -> file: one of each bad kind, made from the real Aperio slide where a real file is needed."""
    d = tmp_path_factory.mktemp("bad_slides")
    raw = cmu_svs.read_bytes()
    rng = np.random.default_rng(0)
    (d / "zero.svs").write_bytes(b"")
    (d / "half.svs").write_bytes(raw[: len(raw) // 2])
    (d / "random.svs").write_bytes(rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    (d / "random_tiff_magic.svs").write_bytes(b"II*\0" + rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    write_huge_header_tiff(d / "huge.tiff", CLAIMED_PX, CLAIMED_PX)
    with open_slide(cmu_svs) as h:
        rgb = h.read_level(0, 0, 0, 768, 512)
    write_pyramid(d / "no_mpp.tiff", rgb, None, 2, compression="zlib")
    return {p.name: p for p in d.iterdir()}


EXPECTED = {
    "zero.svs": QuarantineReason.empty,
    "half.svs": QuarantineReason.truncated,
    "random.svs": QuarantineReason.not_a_slide,
    "random_tiff_magic.svs": QuarantineReason.truncated,  # its first IFD offset points past the end
    "huge.tiff": QuarantineReason.too_large,
    "no_mpp.tiff": QuarantineReason.no_mpp,
}


@pytest.fixture(autouse=True)
def _fresh_pool():
    clear_pool()
    yield
    clear_pool()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_readers_refuse_with_reason_naming_the_file(bad_slides: dict[str, Path], name: str) -> None:
    path = bad_slides[name]
    for read in (lambda: slide_info(path), lambda: read_tile(path, 0, 0, 0.5, 64)):
        with pytest.raises(SlideError) as exc:
            read()
        assert exc.value.reason is EXPECTED[name]
        assert str(path) in str(exc.value) and exc.value.reason.value in str(exc.value)


def test_no_mpp_slide_opens_for_the_catalog_but_never_reads_a_tile(bad_slides: dict[str, Path]) -> None:
    path = bad_slides["no_mpp.tiff"]
    info = slide_info(path, require_mpp=False)
    assert (info.mpp_source, info.mpp_x, info.width, info.height) == ("missing", None, 768, 512)
    handle = get_handle(path)  # the pool opens it (geometry is known) ...
    with pytest.raises(SlideError, match="no_mpp"):
        read_tile(handle, 0, 0, 0.5, 64)  # ... but no physical resolution can be served
    assert read_tile(get_handle(path, 0.5), 0, 0, 0.5, 64).shape == (64, 64, 3)  # an override fixes it


def test_huge_header_is_refused_without_allocating(bad_slides: dict[str, Path]) -> None:
    path = bad_slides["huge.tiff"]
    assert path.stat().st_size < 300
    slide_info(bad_slides["no_mpp.tiff"], require_mpp=False)  # openslide loaded before measuring
    before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(3):
        with pytest.raises(SlideError, match=f"{CLAIMED_PX}x{CLAIMED_PX} px exceeds"):
            slide_info(path)
        with pytest.raises(SlideError, match="too_large"):
            get_handle(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kib < 64 * 1024  # peak grew < 64 MiB


def test_ingest_quarantines_each_bad_file_and_keeps_the_good_ones(bad_slides, cmu_svs, openslide_fixtures, tmp_path) -> None:
    src, work = tmp_path / "src", tmp_path / "work"
    src.mkdir()
    shutil.copy(cmu_svs, src / cmu_svs.name)
    first = ingest(str(src), work, workers=2)
    assert first["status"].tolist() == ["ok"]
    for name, path in bad_slides.items():
        shutil.copy(path, src / name)
    shutil.copy(openslide_fixtures / "small.svs", src / "small.svs")
    cat = ingest(str(src), work, workers=2).set_index("file_name")
    assert {n: cat.at[n, "reason"] for n in EXPECTED} == {n: r.value for n, r in EXPECTED.items()}
    assert {n: cat.at[n, "status"] for n in ("CMU-1-Small-Region.svs", "small.svs")} == {"CMU-1-Small-Region.svs": "ok", "small.svs": "ok"}
    assert all(cat.at[n, "detail"] for n in EXPECTED)  # every quarantine says why
    cmu_before = first.set_index("file_name").loc["CMU-1-Small-Region.svs"]
    cmu_after = cat.loc["CMU-1-Small-Region.svs"]
    assert (cmu_after.slide_id, cmu_after.ingested_at) == (cmu_before.slide_id, cmu_before.ingested_at)  # nothing lost
    pd.testing.assert_frame_equal(pd.read_parquet(work / "catalog.parquet").set_index("file_name"), cat)


def test_mpp_override_table_with_bad_values(bad_slides, cmu_svs, tmp_path) -> None:
    src, work = tmp_path / "src", tmp_path / "work"
    src.mkdir()
    shutil.copy(cmu_svs, src / cmu_svs.name)
    shutil.copy(bad_slides["no_mpp.tiff"], src / "no_mpp.tiff")
    table = tmp_path / "mpp.csv"
    table.write_text("slide,mpp\nno_mpp.tiff,abc\n")
    with pytest.raises(PlutoError, match=r"mpp\.csv: mpp is not a number for \['no_mpp.tiff'\]"):
        ingest(str(src), work, mpp_overrides_csv=table)
    assert not (work / "catalog.parquet").exists()
    table.write_text("slide,mpp\nno_mpp.tiff,500\n")  # a number, but not a believable one
    cat = ingest(str(src), work, mpp_overrides_csv=table).set_index("file_name")
    assert (cat.at["no_mpp.tiff", "reason"], cat.at[cmu_svs.name, "status"]) == ("bad_mpp", "ok")
    assert "500" in cat.at["no_mpp.tiff", "detail"] and "override" in cat.at["no_mpp.tiff", "detail"]
