"""Cohort QC report: one self-contained HTML file (images embedded as PNG data URIs).

Per slide: the pyramid thumbnail written by `run_qc` with the tissue outline and the artifact masks
overlaid, the cell grid coloured by keep/reason, counts and the flag reason; flagged slides first.
Slides quarantined at ingest are listed by name and reason only. Only `thumb.png` (built from the
pyramid) is ever shown: label and macro images, which can carry patient identifiers, are never read.
"""

from __future__ import annotations

import base64
import html
import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pluto.errors import PlutoError
from pluto.atomic import write_bytes
from pluto.qc.atomic import encode_png
from pluto.qc.run import REASONS, SUMMARY_FILE
from pluto.qc.slide_qc import load_qc, slide_dir

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
COLOURS = {"pen": (0, 200, 0), "fold": (255, 160, 0), "bubble": (0, 90, 255)}  # RGB
DROPPED_RGB = (220, 0, 0)


def overlay(thumb_rgb: np.ndarray, masks: dict[str, np.ndarray], dropped_cells: np.ndarray | None = None) -> np.ndarray:
    """Thumbnail with artifact masks blended in, background dimmed and the tissue outlined in black."""
    out = thumb_rgb.astype(np.float32)
    tissue = masks["tissue"]
    out[~tissue] = out[~tissue] * 0.6 + 255 * 0.4
    for name, colour in COLOURS.items():
        m = masks[name]
        out[m] = out[m] * 0.4 + np.array(colour, np.float32) * 0.6
    if dropped_cells is not None:
        out[dropped_cells] = out[dropped_cells] * 0.7 + np.array(DROPPED_RGB, np.float32) * 0.3
    img = np.ascontiguousarray(out.clip(0, 255).astype(np.uint8))
    contours, _ = cv2.findContours(tissue.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(img, contours, -1, (0, 0, 0), 1)
    return img


def _dropped_tissue_cells(qc, shape: tuple[int, int]) -> np.ndarray:
    """Mask px of cells that have tissue but were dropped by an artifact or pixel filter."""
    out = np.zeros(shape, dtype=bool)
    cells = qc.cells
    bad = cells[(~cells["keep"]) & (cells["reason"] != "no_tissue")]
    for r in bad.itertuples(index=False):
        x0, y0 = int(r.x_l0 / qc.downsample), int(r.y_l0 / qc.downsample)
        x1, y1 = int(np.ceil((r.x_l0 + r.w_l0) / qc.downsample)), int(np.ceil((r.y_l0 + r.h_l0) / qc.downsample))
        out[y0:y1, x0:x1] = True
    return out & qc.masks["tissue"]


def _img_tag(rgb: np.ndarray, alt: str) -> str:
    data = base64.b64encode(encode_png(rgb)).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" width="{rgb.shape[1]}" height="{rgb.shape[0]}">'


def _slide_section(qc_dir: Path, row: pd.Series, name: str) -> str:
    d = slide_dir(qc_dir, row["slide_id"])
    thumb_bgr = cv2.imread(str(d / "thumb.png"), cv2.IMREAD_COLOR)
    if thumb_bgr is None:
        raise PlutoError(f"{d / 'thumb.png'}: missing or unreadable thumbnail")
    thumb = cv2.cvtColor(thumb_bgr, cv2.COLOR_BGR2RGB)
    qc = load_qc(qc_dir, row["slide_id"])
    view = overlay(thumb, qc.masks, _dropped_tissue_cells(qc, thumb.shape[:2]))
    counts = ", ".join(f"{r}: {int(row[f'n_{r}'])}" for r in REASONS if int(row[f"n_{r}"]))
    flagged = row["status"] != "ok"
    status = html.escape(row["status"]) + (f" &mdash; {html.escape(str(row['detail']))}" if row["detail"] else "")
    return f"""
<section class="slide{' flagged' if flagged else ''}" id="{html.escape(row['slide_id'])}">
  <h2>{html.escape(name)}</h2>
  <p class="status">{status}</p>
  <table>
    <tr><th>slide_id</th><td><code>{html.escape(row['slide_id'])}</code></td></tr>
    <tr><th>stain</th><td>{html.escape(str(row['stain']))} (HSV filter {'on' if row['hsv_applied'] else 'off'})</td></tr>
    <tr><th>tissue</th><td>{row['tissue_frac']:.1%} of the slide</td></tr>
    <tr><th>artifacts (of tissue)</th><td>pen {row['pen_frac']:.1%}, fold {row['fold_frac']:.1%}, bubble {row['bubble_frac']:.1%}</td></tr>
    <tr><th>cells</th><td>{int(row['n_keep'])} kept of {int(row['n_cells'])} ({int(row['n_tissue_cells'])} with tissue)</td></tr>
    <tr><th>dropped by</th><td>{html.escape(counts) or '&ndash;'}</td></tr>
  </table>
  <div class="images">{_img_tag(thumb, 'thumbnail')}{_img_tag(view, 'tissue and artifact overlay')}</div>
</section>"""


def write_report(qc_dir: Path, catalog_path: Path | None = None, out_path: Path | None = None) -> Path:
    """Write the cohort report (default `qc_dir/report.html`) and return its path."""
    qc_dir = Path(qc_dir)
    summary_path = qc_dir / SUMMARY_FILE
    if not summary_path.is_file():
        raise PlutoError(f"{summary_path}: QC summary missing; run `pluto qc` first")
    summary = pd.read_parquet(summary_path)
    catalog = pd.read_parquet(catalog_path) if catalog_path is not None and Path(catalog_path).is_file() else None
    names = dict(zip(catalog["slide_id"], catalog["file_name"])) if catalog is not None else {}
    summary = summary.assign(_flagged=summary["status"] != "ok").sort_values(["_flagged", "slide_id"], ascending=[False, True])
    sections = []
    for _, row in summary.iterrows():
        name = names.get(row["slide_id"], row["slide_id"][:12])
        if (slide_dir(qc_dir, row["slide_id"]) / "thumb.png").is_file():
            sections.append(_slide_section(qc_dir, row, name))
        else:  # QC could not read it: no thumbnail exists
            sections.append(
                f'<section class="slide flagged" id="{html.escape(row["slide_id"])}"><h2>{html.escape(name)}</h2>'
                f'<p class="status">{html.escape(row["status"])} &mdash; {html.escape(str(row["detail"]))}</p></section>'
            )
    quarantined = ""
    if catalog is not None:
        q = catalog[catalog["status"] != "ok"]
        if len(q):
            rows = "".join(
                f"<tr><td>{html.escape(str(r.file_name))}</td><td>{html.escape(str(r.status))}</td><td>{html.escape(str(r.detail))}</td></tr>"
                for r in q.itertuples(index=False)
            )
            quarantined = f"<h2>Quarantined at ingest ({len(q)})</h2><table><tr><th>file</th><th>status</th><th>detail</th></tr>{rows}</table>"
    n_flagged = int(summary["_flagged"].sum())
    legend = " ".join(
        f'<span style="background:rgb{c}">&nbsp;&nbsp;&nbsp;</span> {n}'
        for n, c in [*COLOURS.items(), ("dropped cell", DROPPED_RGB)]
    )
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>PLUTO cohort QC report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }} section {{ border: 1px solid #ccc; padding: 1em; margin: 1em 0; }}
section.flagged {{ border-color: #c00; background: #fff6f6; }} .status {{ font-weight: bold; }}
td, th {{ text-align: left; padding: 0 1em 0 0; }} .images img {{ margin-right: 1em; max-width: 48%; height: auto; }}
</style></head><body>
<h1>Cohort QC report</h1>
<p>{len(summary)} slides QC'd, {n_flagged} flagged; {int(summary['n_keep'].sum())} cells kept. Flagged slides first.</p>
<p>Overlay legend: {legend}; background dimmed, tissue outlined in black.</p>
{''.join(sections)}
{quarantined}
</body></html>
"""
    out = Path(out_path) if out_path is not None else qc_dir / REPORT_FILE
    write_bytes(out, doc.encode("utf-8"))
    log.info("qc report: %d slides (%d flagged) -> %s", len(summary), n_flagged, out)
    return out
