"""Great Expectations gates: bad tables are rejected and the error lists what failed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pluto.errors import ValidationGateError
from pluto.qc import validate_catalog, validate_manifest, validate_qc


def _catalog(n: int = 3) -> pd.DataFrame:
    return pd.DataFrame({
        "slide_id": [f"{i:064x}" for i in range(n)], "uri": "u", "path": "/p", "vendor": "aperio",
        "width": 100, "height": 100, "mpp_x": 0.5, "mpp_y": 0.5, "mpp_source": "header",
        "status": ["ok"] * n, "stain": "H&E",
    })


def test_catalog_gate_passes_good_and_real_catalog(qc_work):
    validate_catalog(_catalog())
    validate_catalog(pd.read_parquet(qc_work / "catalog.parquet"))


def test_catalog_gate_lists_wrong_mpp_and_duplicate_ids():
    bad = _catalog()
    bad.loc[1, "mpp_x"] = 120.0
    bad.loc[2, "slide_id"] = bad.loc[0, "slide_id"]
    with pytest.raises(ValidationGateError) as err:
        validate_catalog(bad)
    failures = err.value.failures
    assert err.value.table == "catalog" and len(failures) == 2
    mpp = next(f for f in failures if "column='mpp_x'" in f)
    assert "expect_column_values_to_be_between" in mpp and "120.0" in mpp
    dup = next(f for f in failures if "expect_column_values_to_be_unique" in f)
    assert bad.loc[0, "slide_id"] in dup


def test_catalog_gate_ignores_mpp_of_quarantined_rows():
    df = _catalog()
    df.loc[1, ["mpp_x", "mpp_y", "status"]] = [np.nan, np.nan, "quarantined: no_mpp"]
    validate_catalog(df)


def _cells() -> pd.DataFrame:
    return pd.DataFrame({
        "slide_id": "a", "x_l0": [0, 256], "y_l0": [0, 0], "w_l0": 256, "h_l0": 256, "cell_mpp": 0.5,
        "tissue_frac": [0.5, 0.0], "pen_frac": 0.0, "fold_frac": 0.0, "bubble_frac": 0.0,
        "hsv_frac": [0.7, np.nan], "blur_var": [300.0, np.nan], "keep": [True, False], "reason": ["", "no_tissue"],
    })


def test_qc_gate_lists_fractions_and_negative_coordinates():
    validate_qc(_cells())
    bad = _cells()
    bad.loc[0, "tissue_frac"] = 1.5
    bad.loc[1, "x_l0"] = -256
    with pytest.raises(ValidationGateError) as err:
        validate_qc(bad)
    text = str(err.value)
    assert "column='tissue_frac'" in text and "1.5" in text
    assert "column='x_l0'" in text and "-256" in text


def test_manifest_gate():
    good = pd.DataFrame({
        "slide_id": "a", "path": "/p", "level": 0, "x_l0": [0, 550], "y_l0": 0, "mpp": 0.5, "tile_px": 275,
        "read_px": 275, "region_id": [0, 1], "tissue_frac": 0.9, "pen_frac": 0.0, "fold_frac": 0.0, "bubble_frac": 0.0,
        "hsv_frac": [0.8, float("nan")], "fg_frac": [0.9, float("nan")], "blur_var": [500.0, float("nan")],
    })
    validate_manifest(good)
    bad = good.assign(y_l0=[-5, 0], mpp=[0.5, 0.001])
    with pytest.raises(ValidationGateError) as err:
        validate_manifest(bad)
    assert {f.split("(")[0] for f in err.value.failures} == {"expect_column_values_to_be_between"}
    assert any("column='y_l0'" in f and "-5" in f for f in err.value.failures)
    assert any("column='mpp'" in f and "0.001" in f for f in err.value.failures)
    with pytest.raises(ValidationGateError, match="hsv_frac"):
        validate_manifest(good.assign(hsv_frac=[1.5, 0.5]))
    with pytest.raises(ValidationGateError, match="missing column"):
        validate_manifest(good.drop(columns=["read_px"]))
