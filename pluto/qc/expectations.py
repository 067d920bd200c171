"""Great Expectations suites that gate the stage tables: catalog, per-cell QC, tile manifest.

Each gate builds an ephemeral GX context on pandas, validates the table against its suite and
raises `ValidationGateError(table, failures)` when any expectation fails; every failure names the
expectation, its column(s), its parameters and examples of the offending values. GX is imported
inside the functions (it takes seconds to import) with analytics disabled.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pandas as pd

from pluto.errors import ValidationGateError

MPP_RANGE = (0.05, 50.0)  # um/px, the defaults of SlideSettings.mpp_min/mpp_max
_FRACTIONS = ("tissue_frac", "pen_frac", "fold_frac", "bubble_frac")
CATALOG_COLUMNS = ("slide_id", "uri", "path", "vendor", "width", "height", "mpp_x", "mpp_y", "mpp_source", "status", "stain")
QC_COLUMNS = (
    "slide_id", "x_l0", "y_l0", "w_l0", "h_l0", "cell_mpp", *_FRACTIONS, "hsv_frac", "blur_var", "keep", "reason",
)  # fmt: skip
MANIFEST_COLUMNS = (
    "slide_id", "path", "level", "x_l0", "y_l0", "mpp", "tile_px", "read_px", "region_id", *_FRACTIONS,
    "hsv_frac", "fg_frac", "blur_var",  # the tile's own pixel scores (NaN when tiling ran without pixel filters)
)  # fmt: skip
QC_REASONS = ("", "no_tissue", "pen", "fold", "bubble", "blur", "hsv")


def _describe(result: Any) -> str:
    cfg = result.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in {"batch_id", "condition_parser"}}
    if isinstance(kwargs.get("row_condition"), dict):
        kwargs["row_condition"] = kwargs["row_condition"].get("pass_through_filter")
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    res = result.result or {}
    if result.exception_info and result.exception_info.get("raised_exception"):
        detail = f"error: {result.exception_info.get('exception_message')}"
    elif "unexpected_count" in res:
        examples = list(dict.fromkeys(map(repr, res.get("partial_unexpected_list") or [])))[:5]
        detail = f"{res['unexpected_count']} unexpected value(s), e.g. [{', '.join(examples)}]"
    else:
        detail = f"observed {res.get('observed_value')!r} {res.get('details', '')}".rstrip()
    return f"{cfg.type}({args}): {detail}"


def _gx() -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO lines are internals

    return gx


def _gate(table: str, df: pd.DataFrame, required: tuple[str, ...], expectations: list) -> None:
    """Validate `df`; missing required columns fail before any column expectation runs."""
    gx = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValidationGateError(table, [f"expect_table_columns_to_match_set: missing column(s) {missing}"])
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("pluto")
        .add_dataframe_asset(name=table)
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": df})
    )
    suite = gx.ExpectationSuite(name=f"pluto-{table}")
    for exp in [gx.expectations.ExpectTableRowCountToBeBetween(min_value=0), *expectations]:
        suite.add_expectation(exp)
    result = batch.validate(suite, result_format="SUMMARY")
    failures = [_describe(r) for r in result.results if not r.success]
    if failures:
        raise ValidationGateError(table, failures)


def _fractions(gx: Any, columns: tuple[str, ...]) -> list:
    return [gx.expectations.ExpectColumnValuesToBeBetween(column=c, min_value=0.0, max_value=1.0) for c in columns]


def validate_catalog(df: pd.DataFrame, mpp_range: tuple[float, float] = MPP_RANGE) -> None:
    """Catalog gate: unique sha256 slide ids, known status, sane mpp and size for `ok` slides."""
    gx = _gx()
    ok = {"row_condition": 'status=="ok"', "condition_parser": "pandas"}
    e = gx.expectations
    _gate(
        "catalog",
        df,
        CATALOG_COLUMNS,
        [
            e.ExpectColumnValuesToNotBeNull(column="slide_id"),
            e.ExpectColumnValuesToBeUnique(column="slide_id"),
            e.ExpectColumnValuesToMatchRegex(column="slide_id", regex=r"^[0-9a-f]{64}$"),
            e.ExpectColumnValuesToMatchRegex(column="status", regex=r"^(?:ok|quarantined: [a-z_]+)$"),
            *[e.ExpectColumnValuesToNotBeNull(column=c, **ok) for c in ("path", "mpp_x", "mpp_y")],
            *[
                e.ExpectColumnValuesToBeBetween(column=c, min_value=mpp_range[0], max_value=mpp_range[1], **ok)
                for c in ("mpp_x", "mpp_y")
            ],
            *[e.ExpectColumnValuesToBeBetween(column=c, min_value=1, **ok) for c in ("width", "height")],
            e.ExpectColumnValuesToBeInSet(column="mpp_source", value_set=["header", "override", "missing"]),
        ],
    )


def validate_qc(df: pd.DataFrame) -> None:
    """Per-cell QC gate: fractions in [0, 1], non-negative coordinates, known reasons, unique cells."""
    gx = _gx()
    e = gx.expectations
    _gate(
        "qc",
        df,
        QC_COLUMNS,
        [
            e.ExpectColumnValuesToNotBeNull(column="slide_id"),
            e.ExpectCompoundColumnsToBeUnique(column_list=["slide_id", "x_l0", "y_l0"]),
            *[e.ExpectColumnValuesToBeBetween(column=c, min_value=0) for c in ("x_l0", "y_l0")],
            *[e.ExpectColumnValuesToBeBetween(column=c, min_value=1) for c in ("w_l0", "h_l0")],
            e.ExpectColumnValuesToBeBetween(column="cell_mpp", min_value=0, strict_min=True),
            *_fractions(gx, (*_FRACTIONS, "hsv_frac")),
            e.ExpectColumnValuesToBeBetween(column="blur_var", min_value=0),
            e.ExpectColumnValuesToBeInSet(column="keep", value_set=[True, False]),
            e.ExpectColumnValuesToBeInSet(column="reason", value_set=list(QC_REASONS)),
        ],
    )


def validate_manifest(df: pd.DataFrame, mpp_range: tuple[float, float] = MPP_RANGE) -> None:
    """Tile-manifest gate: non-negative level-0 coordinates and levels, sane mpp and sizes, fractions in [0, 1]."""
    gx = _gx()
    e = gx.expectations
    _gate(
        "manifest",
        df,
        MANIFEST_COLUMNS,
        [
            *[e.ExpectColumnValuesToNotBeNull(column=c) for c in ("slide_id", "path", "x_l0", "y_l0")],
            *[e.ExpectColumnValuesToBeBetween(column=c, min_value=0) for c in ("x_l0", "y_l0", "level", "region_id")],
            e.ExpectColumnValuesToBeBetween(column="mpp", min_value=mpp_range[0], max_value=mpp_range[1]),
            *[e.ExpectColumnValuesToBeBetween(column=c, min_value=1) for c in ("tile_px", "read_px")],
            *_fractions(gx, (*_FRACTIONS, "hsv_frac", "fg_frac")),
            e.ExpectColumnValuesToBeBetween(column="blur_var", min_value=0),
        ],
    )
