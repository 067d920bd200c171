"""SlideInfo, MPP provenance and quarantine reasons on real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from pluto.errors import QuarantineReason, SlideError
from pluto.slides import SlideInfo, TileRequest, TileSpec, slide_info
from pluto.slides.metadata import level_downsamples_from_dims, mpp_from_properties


def test_real_svs_info(cmu_svs: Path) -> None:
    info = slide_info(cmu_svs)
    assert (info.vendor, info.width, info.height, info.levels) == ("aperio", 2220, 2967, 1)
    assert (info.mpp_x, info.mpp_y, info.mpp, info.mpp_source, info.objective) == (0.499, 0.499, 0.499, "header", 20.0)
    assert SlideInfo.from_dict(info.to_dict()) == info


def test_value_objects_round_trip() -> None:
    spec = TileSpec(mpp=0.5, tile_px=224)
    assert spec.field_um == pytest.approx(112.0)
    assert TileSpec.from_dict(spec.to_dict()) == spec
    req = TileRequest(x_l0=10, y_l0=20, level=1, x_lv=5, y_lv=10, read_w=225, read_h=225, tile_px=224)
    assert TileRequest.from_dict(req.to_dict()) == req


@pytest.mark.parametrize(
    "name, reason",
    [
        ("unreadable.svs", None),  # opens; its pixels fail later (pre-flight), see test_ingest
        ("unopenable.tiff", QuarantineReason.unreadable),
        ("histolab_broken.svs", QuarantineReason.not_a_slide),
        ("boxes.png", QuarantineReason.not_a_slide),
        ("PROVENANCE.md", QuarantineReason.not_a_slide),
        ("boxes.tiff", QuarantineReason.bad_mpp),  # 72 dpi resolution tags -> 352.8 um/px
    ],
)
def test_fixture_reasons(openslide_fixtures: Path, name: str, reason: QuarantineReason | None) -> None:
    if reason is None:
        assert slide_info(openslide_fixtures / name).vendor == "aperio"
        return
    with pytest.raises(SlideError) as exc:
        slide_info(openslide_fixtures / name)
    assert exc.value.reason is reason
    assert name in str(exc.value)


@pytest.mark.parametrize("cut_bytes", [1, 2_000, 300_000, 1_900_000])
def test_truncated_and_empty(tmp_path: Path, cmu_svs: Path, cut_bytes: int) -> None:
    data = cmu_svs.read_bytes()
    cut = tmp_path / "cut.svs"
    cut.write_bytes(data[: len(data) - cut_bytes])
    with pytest.raises(SlideError) as exc:
        slide_info(cut)
    assert exc.value.reason is QuarantineReason.truncated
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    with pytest.raises(SlideError) as exc:
        slide_info(empty)
    assert exc.value.reason is QuarantineReason.empty


def test_missing_mpp_and_override(pyramids: dict[str, Path]) -> None:
    with pytest.raises(SlideError) as exc:
        slide_info(pyramids["no_mpp"])
    assert exc.value.reason is QuarantineReason.no_mpp
    missing = slide_info(pyramids["no_mpp"], require_mpp=False)
    assert (missing.mpp_x, missing.mpp_source) == (None, "missing")
    with pytest.raises(SlideError):
        _ = missing.mpp
    fixed = slide_info(pyramids["no_mpp"], mpp_override=0.5)
    assert (fixed.mpp, fixed.mpp_source) == (0.5, "override")


def test_limits(cmu_svs: Path) -> None:
    with pytest.raises(SlideError) as exc:
        slide_info(cmu_svs, max_dimension_px=2000)
    assert exc.value.reason is QuarantineReason.too_large
    with pytest.raises(SlideError) as exc:
        slide_info(cmu_svs, mpp_range=(1.0, 50.0))
    assert exc.value.reason is QuarantineReason.bad_mpp


def test_mpp_from_tiff_resolution_tags() -> None:
    assert mpp_from_properties({"tiff.ResolutionUnit": "centimeter", "tiff.XResolution": "40000", "tiff.YResolution": "20000"}) == (0.25, 0.5)
    assert mpp_from_properties({"tiff.ResolutionUnit": "inch", "tiff.XResolution": "50800", "tiff.YResolution": "50800"}) == (0.5, 0.5)
    assert mpp_from_properties({"tiff.ResolutionUnit": "none", "tiff.XResolution": "1", "tiff.YResolution": "1"}) == (None, None)
    assert mpp_from_properties({"openslide.mpp-x": "0.26", "openslide.mpp-y": "0.27", "tiff.ResolutionUnit": "inch"}) == (0.26, 0.27)


def test_pyramid_tags_and_integer_downsamples(pyramids: dict[str, Path]) -> None:
    import openslide

    info = slide_info(pyramids["odd"])
    assert (info.width, info.height, info.mpp, info.mpp_source) == (2219, 2965, pytest.approx(0.25), "header")
    assert info.level_dims == ((2219, 2965), (1110, 1483), (555, 742), (278, 371))
    assert info.level_downsamples == (1.0, 2.0, 4.0, 8.0)
    with openslide.OpenSlide(pyramids["odd"]) as osr:  # what OpenSlide would divide by
        assert osr.level_downsamples[1] != 2.0
    assert slide_info(pyramids["ratio3"]).level_downsamples == (1.0, 3.0, 9.0)
    assert level_downsamples_from_dims(((1000, 1000), (667, 667))) == (1.0, pytest.approx(1000 / 667))

