"""run_qc on a catalog built by pluto.slides.ingest from the real CMU svs; report; CLI."""

from __future__ import annotations

import base64
import re
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pluto.errors import ConfigError
from pluto.qc import QCParams, load_qc, run_qc, write_report
from pluto.qc.expectations import QC_COLUMNS
from pluto.qc.run import qc_slide
from pluto.qc.detectors import heuristic_detector


@pytest.fixture(scope="module")
def qc_run(qc_work):
    progress = []
    summary = run_qc(qc_work / "catalog.parquet", qc_work / "qc", on_progress=lambda d, t: progress.append((d, t)))
    return qc_work, summary, progress


def test_run_qc_writes_every_output(qc_run):
    work, summary, progress = qc_run
    catalog = pd.read_parquet(work / "catalog.parquet")
    slide_id = catalog["slide_id"].iloc[0]
    assert progress == [(1, 1)]
    assert (work / "qc" / "qc_summary.parquet").is_file()
    row = summary.set_index("slide_id").loc[slide_id]
    assert row["status"] == "ok" and row["hsv_applied"]
    assert 0.2 < row["tissue_frac"] < 0.6  # histolab's own mask of this slide: 0.47
    assert 0 < row["n_keep"] <= row["n_tissue_cells"] <= row["n_cells"]

    d = work / "qc" / slide_id
    thumb = cv2.imread(str(d / "thumb.png"))
    qc = load_qc(work / "qc", slide_id)
    assert thumb.shape[:2] == qc.masks["tissue"].shape
    assert qc.downsample == pytest.approx(catalog["width"].iloc[0] / thumb.shape[1])
    cells = qc.cells
    assert set(QC_COLUMNS) <= set(cells.columns)
    assert cells["cell_mpp"].eq(0.5).all()
    # cells tile the slide exactly
    assert (cells["w_l0"] * cells["h_l0"]).sum() == catalog["width"].iloc[0] * catalog["height"].iloc[0]
    # pixel filters were computed exactly on the cells with enough tissue
    read = cells["tissue_frac"] >= QCParams().min_tissue_frac
    assert cells.loc[read, "blur_var"].notna().all() and cells.loc[~read, "blur_var"].isna().all()
    assert set(cells["reason"]) <= {"", "no_tissue", "pen", "fold", "bubble", "blur", "hsv"}
    assert (cells["keep"] == (cells["reason"] == "")).all()
    # score_boxes on the cells themselves reproduces the stored fractions and keep flags
    scores = qc.score_boxes(cells[["x_l0", "y_l0", "w_l0", "h_l0"]].to_numpy())
    np.testing.assert_allclose(scores["tissue_frac"], cells["tissue_frac"], atol=1e-9)
    assert (scores["cell_keep"].to_numpy() == cells["keep"].to_numpy()).all()


def test_non_he_stain_skips_hsv_filter(qc_work, tmp_path):
    row = pd.read_parquet(qc_work / "catalog.parquet").iloc[0]
    he = qc_slide(row.slide_id, row.path, "H&E", tmp_path / "he", QCParams(), heuristic_detector)
    ihc = qc_slide(row.slide_id, row.path, "IHC", tmp_path / "ihc", QCParams(), heuristic_detector)
    he_cells = pd.read_parquet(tmp_path / "he" / row.slide_id / "qc.parquet")
    ihc_cells = pd.read_parquet(tmp_path / "ihc" / row.slide_id / "qc.parquet")
    assert he["hsv_applied"] and not ihc["hsv_applied"]
    assert he_cells["hsv_frac"].notna().any() and ihc_cells["hsv_frac"].isna().all()
    assert he["n_hsv"] > 0 and ihc["n_hsv"] == 0
    assert ihc["n_keep"] == he["n_keep"] + he["n_hsv"]


def test_blank_slide_is_flagged_not_an_error(tmp_path, qc_work):
    from pluto.slides import ingest, write_pyramid

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(238, 4, (1024, 1536, 3)), 0, 255).astype(np.uint8)
    write_pyramid(src / "blank.tiff", glass, mpp=0.5, n_levels=2)
    shutil.copy(qc_work / "src" / "CMU-1-Small-Region.svs", src)
    ingest(str(src), tmp_path, workers=1)
    summary = run_qc(tmp_path / "catalog.parquet", tmp_path / "qc").set_index("status")
    assert "flagged: no_tissue" in summary.index and "ok" in summary.index
    blank = summary.loc["flagged: no_tissue"]
    assert blank["n_keep"] == 0 and blank["tissue_frac"] == 0.0

    html = write_report(tmp_path / "qc", tmp_path / "catalog.parquet").read_text()
    assert html.index("flagged: no_tissue") < html.index(">ok<")  # flagged slides first


def test_custom_detector_and_bad_dotted_path(qc_work, tmp_path):
    summary = run_qc(qc_work / "catalog.parquet", tmp_path / "qc",
                     detectors=lambda thumb, tissue: {"pen": np.ones_like(tissue)})
    assert summary["status"].iloc[0] == "flagged: no_usable_cells"
    cells = load_qc(tmp_path / "qc", summary["slide_id"].iloc[0]).cells
    assert set(cells["reason"]) == {"no_tissue", "pen"}
    with pytest.raises(ConfigError, match="qc.detector"):
        run_qc(qc_work / "catalog.parquet", tmp_path / "qc2", params=QCParams(detector="pluto.qc:nothing_here"))


def test_report_has_every_slide_and_no_label_or_macro(qc_run, cmu_svs):
    import openslide

    work, summary, _ = qc_run
    path = write_report(work / "qc", work / "catalog.parquet")
    html = path.read_text()
    for slide_id in summary["slide_id"]:
        assert f'id="{slide_id}"' in html
    assert "CMU-1-Small-Region.svs" in html
    thumbs = {tuple(cv2.imread(str(p)).shape) for p in (work / "qc").glob("*/thumb.png")}
    with openslide.OpenSlide(str(cmu_svs)) as osr:
        associated = {n: np.asarray(img.convert("RGB")) for n, img in osr.associated_images.items()}
    assert {"label", "macro"} <= set(associated)
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(images) == 2 * len(summary)
    for b64 in images:
        img = cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_COLOR)
        assert tuple(img.shape) in thumbs  # only pyramid thumbnails and their overlays
        for assoc in associated.values():
            assert img.shape[:2] != assoc.shape[:2]


def test_cli_qc_and_report(qc_work, tmp_path):
    from pluto.cli import app

    work = tmp_path / "w"
    work.mkdir()
    shutil.copy(qc_work / "catalog.parquet", work / "catalog.parquet")
    runner = CliRunner()
    res = runner.invoke(app, ["qc", "--work", str(work)])
    assert res.exit_code == 0, res.output
    assert "1 slides QC'd" in res.output
    res = runner.invoke(app, ["report", "--work", str(work)])
    assert res.exit_code == 0, res.output
    assert res.output.strip().endswith("report.html") and (work / "qc" / "report.html").is_file()


def _published(qc_dir) -> dict[str, bytes]:
    return {str(p.relative_to(qc_dir)): p.read_bytes() for p in sorted(qc_dir.rglob("*")) if p.is_file()}


def test_nothing_is_published_before_the_qc_gate_passes(qc_work, tmp_path, monkeypatch):
    """A failing gate, or an error mid-run, leaves the previous QC byte for byte and nothing new visible."""
    import pluto.qc.run as run
    from pluto.errors import PlutoError, ValidationGateError
    from pluto.qc.expectations import validate_qc

    qc_dir = tmp_path / "qc"
    run_qc(qc_work / "catalog.parquet", qc_dir)
    before = _published(qc_dir)
    slide_id = pd.read_parquet(qc_work / "catalog.parquet")["slide_id"].iloc[0]
    assert f"{slide_id}/qc.parquet" in before and "qc_summary.parquet" in before

    seen = {}

    def failing_gate(df):
        validate_qc(df)  # the real suite passes on this run's cells (all pen: every cell dropped) ...
        seen["at_gate"] = _published(qc_dir)
        seen["pen_cells"] = int((df["reason"] == "pen").sum())
        raise ValidationGateError("qc", ["a failing expectation"])  # ... and a failing one stops the publish

    monkeypatch.setattr(run, "validate_qc", failing_gate)
    all_pen = lambda thumb, tissue: {"pen": np.ones_like(tissue)}  # noqa: E731  (changes every output)
    with pytest.raises(ValidationGateError):
        run_qc(qc_work / "catalog.parquet", qc_dir, detectors=all_pen)
    assert seen["pen_cells"] > 0 and seen["at_gate"] == before  # the gate ran before anything was published
    assert _published(qc_dir) == before and list(tmp_path.glob(".qc.staging-*")) == []

    def broken(thumb, tissue):
        raise PlutoError("detector failed mid-run")

    monkeypatch.setattr(run, "validate_qc", validate_qc)
    with pytest.raises(PlutoError, match="mid-run"):
        run_qc(qc_work / "catalog.parquet", qc_dir, detectors=broken)
    assert _published(qc_dir) == before

    summary = run_qc(qc_work / "catalog.parquet", qc_dir, detectors=all_pen)  # a passing gate publishes
    assert summary["status"].iloc[0] == "flagged: no_usable_cells"
    assert set(load_qc(qc_dir, slide_id).cells["reason"]) == {"no_tissue", "pen"}
    assert list(tmp_path.glob(".qc.staging-*")) == []
