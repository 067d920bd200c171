"""Published numbers beside ours, shown only where dataset, split, protocol and a complete copy all match.

Contract (report.py calls this; the signature stays stable):

    published_for(record: EvalRecord) -> dict[str, dict[str, float] | str]

One entry per source paper, in `SOURCES` order (one report column each, headed by `SOURCES[paper]`):
either {model: published value} when `record` is comparable to that paper's numbers, or a short
reason why not, e.g. "not reported", "quick preset, not eva's protocol", "incomplete copy: 32 of
7,180 images", "split test; the paper reports val". Values are fractions (balanced accuracy, Dice)
or Pearson r, converted from the papers' percentages; each row of `ROWS` cites table and columns.

Comparable means all of:
- dataset and embedding mode: the paper reports that benchmark (our adapter name; HEST per task via
  `record.extra["hest_task"]`) with that embedding (CLS, CLS+Mean(patch tokens); patch tokens for
  segmentation);
- protocol: the record ran eva 0.4.5's preset of that task (`linear_probe/eva`, `abmil/eva`,
  `segmentation/eva`; `hest_ridge`, HEST-Benchmark's PCA + ridge) and so did the paper;
- split: the record scores the split eva reports (`benchmarks.EVA_REPORTED_SPLIT`: eva's leaderboard
  reports "test" where the config has it, else "val"); HEST values are its own patient folds;
- a complete copy: `record.extra["incomplete"]` (set by the suite from the adapter) is unset.

PLUTO-4 (Padigela et al. 2025) ran eva's default configs ("EVA evaluation protocol", §4.2) and
HEST-Benchmark's ridge protocol, so its rows match our eva preset. Midnight (Karasikov et al. 2025,
Table 2) disabled eva's early stopping for every task but Camelyon16 and PANDA (§2; PATIENCE=12500
in the authors' eval/run_eva_internal.sh), and ran those two with its own configs (cosine schedule;
PANDA-Small 49 epochs, patience 8, 448-px tiles at 0.25 um/px; Camelyon16-small 5 runs, patience 10),
so none of its numbers is eva 0.4.5's protocol: they are never shown as comparable, and its column
says why (the values stay here, cited, so the reason names what the paper does report).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pluto.eval.records import EvalRecord

SOURCES = {
    "PLUTO-4": "PLUTO-4 (Padigela et al. 2025; eva defaults)",
    "Midnight": "Midnight (Karasikov et al. 2025, Table 2; eva without early stopping)",
}

MIDNIGHT_NO_EARLY_STOP = "protocol differs: Midnight ran eva with early stopping off (PATIENCE=12500)"
MIDNIGHT_OWN_MIL = "protocol differs: Midnight's own ABMIL config (cosine schedule, other epochs/patience/tiles)"


@dataclass(frozen=True)
class Row:
    paper: str  # a key of SOURCES
    dataset: str  # benchmarks.ADAPTERS name; "hest/<task>" for a HEST-Benchmark task
    mode: str  # embedding mode of our records
    values: dict[str, float]  # model -> fraction / Pearson r
    source: str  # table and columns
    protocol_differs: str | None = None  # why this row is never eva 0.4.5's protocol


# PLUTO-4 §4.2 "Segmentation": eva's ConvDecoderWithImage (upsampled tokens concatenated with the image);
# eva 0.4.5's consep/monusac configs, which we follow, use ConvDecoderMS on the tokens alone
PLUTO4_OTHER_DECODER = "protocol differs: PLUTO-4 used eva's ConvDecoderWithImage, eva 0.4.5's configs (ours) ConvDecoderMS"


def _pluto4(dataset: str, label: str, mode: str, s8: float, s16: float, g: float) -> Row:
    cols = {"cls": "CLS token only", "cls+mean": "CLS + Mean(Patch-Token)"}.get(mode, "CLS token only (DICE; the decoder reads patch tokens)")
    return Row("PLUTO-4", dataset, mode, {"PLUTO-4S-8": s8, "PLUTO-4S-16": s16, "PLUTO-4G": g},
               f"PLUTO-4 Table 3, row {label}, {cols} columns 4S-8/4S-16/4G (% / 100)",
               PLUTO4_OTHER_DECODER if mode == "patch_tokens" else None)


def _midnight(dataset: str, mode: str, value: float, column: str, why: str = MIDNIGHT_NO_EARLY_STOP) -> Row:
    return Row("Midnight", dataset, mode, {"Midnight-92k": value}, f"Midnight Table 2, row Midnight-92k, column {column}", why)


# PLUTO-4 Table 5 (HEST per tumour type, PLUTO-4G column, mean Pearson r over folds; its AVG 0.427 is the
# CLS value of Tables 1 and 3). Keys are HEST-Benchmark task folders; the paper's "LYMPH" is LYMPH_IDC.
HEST_TABLE5_PLUTO4G = {"CCRCC": 0.289, "COAD": 0.316, "IDC": 0.606, "LUNG": 0.569, "LYMPH_IDC": 0.273, "PAAD": 0.511,
                       "PRAD": 0.374, "READ": 0.233, "SKCM": 0.670}

ROWS: tuple[Row, ...] = (
    _pluto4("mhist", "MHIST", "cls", 0.837, 0.835, 0.875),
    _pluto4("breakhis", "BreakHIS", "cls", 0.813, 0.792, 0.815),
    _pluto4("bach", "BACH", "cls", 0.827, 0.796, 0.938),
    _pluto4("gleason_arvaniti", "Gleason (Arvaniti)", "cls", 0.762, 0.763, 0.793),
    _pluto4("pcam", "PCAM (Test)", "cls", 0.907, 0.909, 0.951),
    _pluto4("crc", "CRC", "cls", 0.952, 0.950, 0.964),
    _pluto4("panda_small", "PANDA-Small", "cls", 0.618, 0.615, 0.668),
    _pluto4("mhist", "MHIST", "cls+mean", 0.842, 0.834, 0.879),
    _pluto4("breakhis", "BreakHIS", "cls+mean", 0.808, 0.768, 0.818),
    _pluto4("bach", "BACH", "cls+mean", 0.851, 0.798, 0.932),
    _pluto4("gleason_arvaniti", "Gleason (Arvaniti)", "cls+mean", 0.763, 0.766, 0.785),
    _pluto4("pcam", "PCAM (Test)", "cls+mean", 0.914, 0.916, 0.952),
    _pluto4("crc", "CRC", "cls+mean", 0.954, 0.955, 0.968),
    _pluto4("panda_small", "PANDA-Small", "cls+mean", 0.631, 0.630, 0.666),
    _pluto4("monusac", "MoNuSAC", "patch_tokens", 0.678, 0.640, 0.704),
    _pluto4("consep", "ConSep", "patch_tokens", 0.649, 0.621, 0.650),
    *(Row("PLUTO-4", f"hest/{task}", "cls", {"PLUTO-4G": r}, f"PLUTO-4 Table 5, row {task.split('_')[0]}, column PLUTO-4G")
      for task, r in HEST_TABLE5_PLUTO4G.items()),
    _midnight("bach", "cls+mean", 0.889, "bach"),
    _midnight("bracs", "cls+mean", 0.615, "brcs"),
    _midnight("breakhis", "cls+mean", 0.793, "bkhs"),
    _midnight("crc", "cls+mean", 0.967, "crc"),
    _midnight("gleason_arvaniti", "cls+mean", 0.823, "glsn"),
    _midnight("mhist", "cls+mean", 0.831, "mhst"),
    _midnight("pcam", "cls+mean", 0.948, "pc"),
    _midnight("camelyon16_small", "cls+mean", 0.872, "c16", MIDNIGHT_OWN_MIL),
    _midnight("panda_small", "cls+mean", 0.643, "pnd", MIDNIGHT_OWN_MIL),
    _midnight("consep", "patch_tokens", 0.629, "cnsp"),
    _midnight("monusac", "patch_tokens", 0.656, "mnsc"),
)
_BY_KEY = {(r.paper, r.dataset, r.mode): r for r in ROWS}

# the protocol each paper's benchmark ran under, as our records name it (the eva preset of that task)
_EVA_PROTOCOL = {"linear": "linear_probe/eva", "abmil": "abmil/eva", "segmentation": "segmentation/eva"}


def _dataset_key(record: EvalRecord) -> str:
    if record.dataset == "hest":
        return f"hest/{str(record.extra.get('hest_task', '')).upper()}"
    return record.dataset


def expected_protocol(dataset: str) -> str:
    """The protocol a published number of `dataset` was measured under, in our records' naming."""
    if dataset.startswith("hest/"):
        return "hest_ridge"
    from pluto.eval.eva_protocol import EVA_TASKS

    return _EVA_PROTOCOL[EVA_TASKS[dataset].head]


def _why_not(record: EvalRecord, row: Row) -> str | None:
    """The first reason `record` is not comparable to `row`, or None."""
    want = expected_protocol(row.dataset)
    if record.protocol != want:
        preset = record.protocol.partition("/")[2]
        return f"{preset} preset, not eva's protocol" if preset and preset != "eva" else f"protocol {record.protocol}, the paper ran {want}"
    if row.protocol_differs:
        return row.protocol_differs
    if not row.dataset.startswith("hest/"):
        from pluto.eval.benchmarks import EVA_REPORTED_SPLIT

        reported = EVA_REPORTED_SPLIT[row.dataset]
        if record.split != reported:
            return f"split {record.split}; the paper reports {reported}"
    incomplete = record.extra.get("incomplete")
    return f"incomplete copy: {incomplete}" if incomplete else None


def published_for(record: EvalRecord) -> dict[str, dict[str, float] | str]:
    """Per source paper (SOURCES order): {model: value} comparable to `record`, or the reason why not."""
    key = _dataset_key(record)
    out: dict[str, dict[str, float] | str] = {}
    for paper in SOURCES:
        row = _BY_KEY.get((paper, key, record.embedding_mode))
        if row is None:
            out[paper] = "not reported"
            continue
        reason = _why_not(record, row)
        out[paper] = reason if reason else dict(row.values)
    return out
