"""Published numbers: shown only where dataset, split, protocol, embedding and a complete copy match; else the reason."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pluto.eval.benchmarks import EVA_REPORTED_SPLIT
from pluto.eval.published import HEST_TABLE5_PLUTO4G, ROWS, SOURCES, published_for
from pluto.eval.records import EvalRecord

PAPER = Path(__file__).resolve().parents[3] / "shared" / "papers" / "pluto4-paper.txt"  # ../shared beside the checkout


def rec(dataset: str, split: str, protocol: str, mode: str = "cls", **extra) -> EvalRecord:
    return EvalRecord("t", dataset, split, "balanced_accuracy", (0.5, 0.6), (0, 1), protocol, "m", 16, mode, extra=extra)


def test_match_gives_values_per_paper_and_midnight_says_why_not():
    out = published_for(rec("bach", "val", "linear_probe/eva", "cls+mean"))
    assert list(out) == list(SOURCES)
    assert out["PLUTO-4"] == {"PLUTO-4S-8": 0.851, "PLUTO-4S-16": 0.798, "PLUTO-4G": 0.932}  # Table 3, CLS+Mean
    assert out["Midnight"].startswith("protocol differs") and "early stopping" in out["Midnight"]
    cls = published_for(rec("bach", "val", "linear_probe/eva"))
    assert cls["PLUTO-4"]["PLUTO-4G"] == 0.938 and cls["Midnight"] == "not reported"  # Midnight reports CLS+Mean only


@pytest.mark.parametrize("record, reason", [
    (rec("bach", "val", "linear_probe/quick"), "quick preset, not eva's protocol"),
    (rec("gleason_arvaniti", "test", "linear_probe/eva"), "split test; the paper reports val"),
    (rec("crc", "val", "linear_probe/eva", incomplete="32 of 7,180 images (val)"), "incomplete copy: 32 of 7,180 images (val)"),
    (rec("panda", "test", "abmil/eva"), "not reported"),  # the papers report PANDA-Small, not the full split
    (rec("folder", "test", "linear_probe/eva"), "not reported"),
    (rec("panda_small", "test", "linear_probe/eva"), "protocol linear_probe/eva, the paper ran abmil/eva"),
    (rec("hest", "test", "hest_ridge", "cls+mean", hest_task="IDC"), "not reported"),  # Table 5 is CLS only
    (rec("consep", "val", "segmentation/eva", "patch_tokens"),  # PLUTO-4 §4.2: ConvDecoderWithImage, not eva 0.4.5's ConvDecoderMS
     "protocol differs: PLUTO-4 used eva's ConvDecoderWithImage, eva 0.4.5's configs (ours) ConvDecoderMS"),
])
def test_each_mismatch_gives_its_reason(record, reason):
    assert published_for(record)["PLUTO-4"] == reason


def test_panda_small_and_hest_per_task_from_pluto4():
    panda = published_for(rec("panda_small", "test", "abmil/eva"))
    assert panda["PLUTO-4"] == {"PLUTO-4S-8": 0.618, "PLUTO-4S-16": 0.615, "PLUTO-4G": 0.668}
    assert panda["Midnight"] == "not reported"  # Midnight reports CLS+Mean only
    assert "own ABMIL config" in published_for(rec("panda_small", "test", "abmil/eva", "cls+mean"))["Midnight"]
    lymph = published_for(rec("hest", "test", "hest_ridge", hest_task="LYMPH_IDC"))
    assert lymph["PLUTO-4"] == {"PLUTO-4G": 0.273} and lymph["Midnight"] == "not reported"
    assert published_for(rec("hest", "test", "hest_ridge", hest_task="ccRCC"))["PLUTO-4"] == {"PLUTO-4G": 0.289}
    assert published_for(rec("hest", "test", "hest_ridge", hest_task="IDC", incomplete="1 of 4 folds"))["PLUTO-4"] \
        == "incomplete copy: 1 of 4 folds"
    assert round(sum(HEST_TABLE5_PLUTO4G.values()) / 9, 3) == 0.427  # Table 5's AVG row


def test_every_row_cites_its_table_and_every_dataset_has_eva_split():
    for row in ROWS:
        assert re.search(r"Table [235], row", row.source), row
        assert row.dataset.startswith("hest/") or row.dataset in EVA_REPORTED_SPLIT


def test_pluto4_rows_equal_the_paper_text():
    """Each PLUTO-4 value, as a percentage (Table 3) or r (Table 5), is the cell the row's source names."""
    text = PAPER.read_text()
    table3 = text[text.index("Table 3. **Performance"):text.index("Table 4.")]
    table5 = text[text.index("Table 5. HEST"):text.index("AVG")]
    cell = lambda s: float(re.sub(r"<.?b>|\(.*", "", s).strip())  # noqa: E731
    for row in (r for r in ROWS if r.paper == "PLUTO-4"):
        label = re.search(r"row (.+?),", row.source).group(1)
        if row.dataset.startswith("hest/"):
            line = next(ln for ln in table5.splitlines() if ln.startswith(label + "\t"))
            assert cell(line.split("\t")[1]) == row.values["PLUTO-4G"], row
            continue
        cells = next(ln for ln in table3.splitlines() if ln.startswith(label + "\t")).split("\t")[1:]
        first = 3 if row.mode == "cls+mean" else 0
        got = [cell(c) / 100 for c in cells[first:first + 3]]
        assert got == pytest.approx([row.values[m] for m in ("PLUTO-4S-8", "PLUTO-4S-16", "PLUTO-4G")], abs=1e-9), row
