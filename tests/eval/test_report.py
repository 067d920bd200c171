"""The results table: model, champion, both baselines and each paper side by side in CSV, HTML and PNG; nothing silently absent."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import pytest

from pluto.eval.published import SOURCES
from pluto.eval.records import EVAL_SUITE_VERSION, EvalRecord
from pluto.eval.report import draw_results, plot_series, results_table, write_report


def rec(task, dataset, values, mode="cls", protocol="linear_probe/eva", version=None, split="val", metric="balanced_accuracy",
        **extra) -> EvalRecord:
    kw = {"suite_version": version} if version else {}
    return EvalRecord(task, dataset, split, metric, values, tuple(range(len(values))), protocol, "m", 16, mode, extra=extra, **kw)


MODEL = [rec("bach", "bach", (0.80, 0.90), spread_over="seeds"), rec("bach", "bach", (0.70,), "cls+mean"),
         rec("consep", "consep", (0.61, 0.63, 0.65), "patch_tokens", "segmentation/eva", metric="dice", spread_over="seeds")]
BASELINES = {"random_init": [rec("bach", "bach", (0.31, 0.33), spread_over="seeds")],
             "mean_rgb": [rec("bach", "bach", (0.44, 0.46), "mean_rgb", spread_over="folds")]}
CHAMPION = [rec("bach", "bach", (0.75, 0.77), spread_over="bootstrap"),
            rec("bach", "bach", (0.99,), "cls+mean", version="1"),  # an older suite: not comparable
            rec("consep", "consep", (0.5,), "patch_tokens", "segmentation/quick", metric="dice")]  # another protocol


def _rows(header, rows) -> dict[str, dict[str, str]]:
    return {row[0]: dict(zip(header, row)) for row in rows}


def test_model_champion_baselines_and_papers_side_by_side():
    header, rows = results_table(MODEL, BASELINES, CHAMPION)
    by = _rows(header, rows)
    bach, consep = by["bach"], by["consep"]
    assert bach["model cls"] == "0.850 ± 0.071 (n=2, over seeds)" and bach["model cls+mean"] == "0.700 (n=1)"
    assert bach["champion cls"] == "0.760 ± 0.014 (n=2, over bootstrap)"
    assert bach["champion cls+mean"] == "not comparable (protocol linear_probe/eva / suite v1)"
    assert consep["champion patch_tokens"] == f"not comparable (protocol segmentation/quick / suite v{EVAL_SUITE_VERSION})"
    assert bach["baseline random-init twin"] == "0.320 ± 0.014 (n=2, over seeds)"
    assert bach["baseline mean-RGB"] == "0.450 ± 0.014 (n=2, over folds)"
    assert consep["baseline random-init twin"] == consep["baseline mean-RGB"] == "not run"
    pluto4, midnight = SOURCES["PLUTO-4"], SOURCES["Midnight"]
    assert bach[pluto4] == ("[cls] PLUTO-4S-8 0.827, PLUTO-4S-16 0.796, PLUTO-4G 0.938; "  # PLUTO-4 Table 3, per embedding
                            "[cls+mean] PLUTO-4S-8 0.851, PLUTO-4S-16 0.798, PLUTO-4G 0.932")
    assert bach[midnight].startswith("[cls] not reported; [cls+mean] protocol differs")
    # PLUTO-4 Table 5's CoNSeP numbers come from eva's ConvDecoderWithImage, not the vendored configs' decoder
    assert consep[pluto4].startswith("protocol differs: PLUTO-4 used eva's ConvDecoderWithImage")


def test_missing_champion_and_baselines_are_said_not_dropped():
    header, rows = results_table(MODEL[:1])
    bach = _rows(header, rows)["bach"]
    assert bach["champion cls"] == "no champion"
    assert bach["baseline random-init twin"] == bach["baseline mean-RGB"] == "not run"
    assert _rows(*results_table(MODEL[:1], champion=[]))["bach"]["champion cls"] == "not run"


def test_csv_html_and_png_carry_the_same_table(tmp_path):
    paths = write_report(tmp_path, MODEL, BASELINES, CHAMPION)
    header, rows = results_table(MODEL, BASELINES, CHAMPION)
    table = pd.read_csv(paths["csv"], dtype=str, keep_default_na=False)
    assert list(table.columns) == header and table.values.tolist() == rows
    page = paths["html"].read_text()
    for cell in ("0.320 ± 0.014 (n=2, over seeds)", "0.450 ± 0.014 (n=2, over folds)", "not run",
                 "not comparable (protocol linear_probe/eva / suite v1)", SOURCES["PLUTO-4"], "baseline random-init twin"):
        assert html.escape(cell) in page
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_png_has_a_bar_series_per_model_mode_champion_and_baseline():
    series = plot_series(MODEL, BASELINES, CHAMPION)
    assert list(series) == ["model cls", "model cls+mean", "model patch_tokens", "champion", "random-init twin", "mean-RGB"]
    assert series["random-init twin"]["bach"].mean == pytest.approx(0.32) and series["random-init twin"]["consep"] is None
    assert series["champion"]["bach"].mean == pytest.approx(0.76) and series["champion"]["consep"] is None  # other protocol: no bar
    fig = draw_results(series)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(series)
    heights = {c.get_label(): [b.get_height() for b in c] for c in ax.containers if hasattr(c, "patches")}
    assert heights["random-init twin"][0] == pytest.approx(0.32) and np.isnan(heights["random-init twin"][1])  # tasks sorted: bach, consep
    assert heights["mean-RGB"][0] == pytest.approx(0.45)
    assert sum(t.get_text() == "not run / n.c." for t in ax.texts) == sum(np.isnan(h).sum() for h in heights.values())
