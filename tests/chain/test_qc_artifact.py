"""The QC flow's `qc-summary` artifact summarises the cohort: its size does not grow with the slide count."""

from __future__ import annotations

import re

import pandas as pd

from flows.qc import qc_markdown


def _summary(n_slides: int) -> pd.DataFrame:
    """A QC summary shaped like pluto.qc's: every 7th slide without tissue, every 11th unreadable."""
    rows = []
    for i in range(n_slides):
        reason = "no_tissue" if i % 7 == 0 else "unreadable" if i % 11 == 0 else ""
        rows.append({"slide_id": f"slide-{i:06d}", "status": f"flagged: {reason}" if reason else "ok", "reason": reason,
                     "n_cells": 40, "n_keep": 0 if reason else 30})
    return pd.DataFrame(rows)


def test_artifact_counts_top_reasons_and_links_without_listing_slides():
    small, large = _summary(50), _summary(20_000)
    text = qc_markdown(large, "/work/qc/report.html", "http://127.0.0.1:5000/#/experiments/1/runs/abc")
    flagged = large[large["status"] != "ok"]
    n_tissue, n_unreadable = (int((flagged["reason"] == r).sum()) for r in ("no_tissue", "unreadable"))
    assert f"{len(large)} slides: {len(large) - len(flagged)} ok, {len(flagged)} flagged" in text
    assert f"{int(large['n_keep'].sum())} of {int(large['n_cells'].sum())} grid cells kept" in text
    assert re.search(rf"\| no_tissue\s+\|\s+{n_tissue} \| slide-000000 \|", text)
    assert re.search(rf"\| unreadable\s+\|\s+{n_unreadable} \| slide-000011 \|", text)
    assert text.index("no_tissue") < text.index("unreadable")  # most frequent first
    assert "(http://127.0.0.1:5000/#/experiments/1/runs/abc)" in text and "/work/qc/report.html" in text
    assert sum("slide-" in line for line in text.splitlines()) == 2  # one example per reason, no slide list
    assert len(text.splitlines()) == len(qc_markdown(small, "r", "u").splitlines())


def test_artifact_names_how_many_reasons_it_leaves_out():
    summary = _summary(30)
    for i, reason in enumerate(("truncated", "no_mpp", "no_usable_cells", "unreadable_label")):
        summary.loc[i + 1, ["status", "reason"]] = (f"flagged: {reason}", reason)
    text = qc_markdown(summary, "r", "", top_reasons=3)
    assert "... and 3 other reason(s)." in text and "MLflow" not in text
