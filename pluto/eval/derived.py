"""Labeled sets derived from the bundled slides (shared/data/README.md): resolution prediction and
tissue / background / pen (/ fold) tiles labelled by the QC masks.

Resolution: each tissue region is read at 0.5, 1.0 and 2.0 um/px around the same centre and
labelled by its resolution. Magnification prediction is a known probe for pathology encoders: the
three reads show the same tissue, so only scale cues (nucleus size, texture frequency) separate the
classes.

QC labels: see `qc_label_set`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pluto.errors import PlutoError

if TYPE_CHECKING:
    import pandas as pd

    from pluto.qc.params import QCParams
    from pluto.qc.slide_qc import SlideQC

log = logging.getLogger(__name__)

RESOLUTION_MPPS = (0.5, 1.0, 2.0)
MIN_TISSUE_SATURATION = 0.08  # mean HSV saturation of the coarsest read; glass background is ~0.02


def saturation(rgb: np.ndarray) -> float:
    f = rgb.astype(np.float32) / 255.0
    mx, mn = f.max(-1), f.min(-1)
    return float(np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0).mean())


def resolution_set(slide: Path, tile_px: int = 112, mpps: tuple[float, ...] = RESOLUTION_MPPS,
                   max_regions: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 (N, tile_px, tile_px, 3), labels int (index into `mpps`), region id per image).

    Regions are centres of a grid whose step is half the coarsest field of view, kept when the coarsest
    read is tissue (saturation), then a seeded sample of `max_regions`. Region ids let folds keep
    the three reads of one region together.
    """
    from pluto.slides import get_handle, read_tile

    handle = get_handle(slide)
    info = handle.info
    fov_l0 = [tile_px * m / info.mpp for m in mpps]  # level-0 px covered per resolution
    half = int(np.ceil(max(fov_l0) / 2))  # grid step = half the coarsest field of view
    centres = [(x, y) for y in range(half, info.height - half + 1, half) for x in range(half, info.width - half + 1, half)]
    if not centres:
        raise PlutoError(f"{slide}: too small for {tile_px}-px tiles at {max(mpps)} um/px")
    kept = [c for c in centres
            if saturation(read_tile(handle, int(c[0] - fov_l0[-1] / 2), int(c[1] - fov_l0[-1] / 2), mpps[-1], tile_px)) >= MIN_TISSUE_SATURATION]
    rng = np.random.default_rng(seed)
    kept = [kept[i] for i in sorted(rng.permutation(len(kept))[:max_regions])]
    if not kept:
        raise PlutoError(f"{slide}: no tissue regions for the resolution task")
    images, labels, regions = [], [], []
    for r, (cx, cy) in enumerate(kept):
        for k, (m, fov) in enumerate(zip(mpps, fov_l0)):
            images.append(read_tile(handle, int(round(cx - fov / 2)), int(round(cy - fov / 2)), m, tile_px))
            labels.append(k), regions.append(r)
    return np.stack(images), np.array(labels, np.int64), np.array(regions, np.int64)


QC_CLASSES = ("background", "tissue", "pen", "fold")
QC_SPLIT_FRACS = (("train", 0.6), ("val", 0.2), ("test", 0.2))


@dataclass(frozen=True)
class QCLabelRule:
    """Mask fractions (of the tile's area, from `SlideQC.score_boxes`) that give a tile a label.

    Precedence pen > fold > tissue > background; a tile that fits none is left out (mixed
    tiles would make the label a matter of threshold). The tissue mask counts ink as tissue (as
    histolab's does), hence "tissue" and "background" both require no ink.
    `min_tissue_frac` 0.9 is far above the Midnight 40% foreground threshold: a tissue tile is tissue
    almost everywhere. `max_other_frac` 0.02 is at most ~1 mask pixel of a 7x7-mask-px tile.
    """

    min_tissue_frac: float = 0.9
    max_background_tissue_frac: float = 0.02
    min_pen_frac: float = 0.5
    min_fold_frac: float = 0.5
    max_other_frac: float = 0.02

    def label(self, fracs: pd.DataFrame) -> np.ndarray:
        """Label index into QC_CLASSES per row of score_boxes output, -1 for unlabelled."""
        t, p, f, b = (fracs[f"{n}_frac"].to_numpy() for n in ("tissue", "pen", "fold", "bubble"))
        clean = (p <= self.max_other_frac) & (b <= self.max_other_frac)
        out = np.full(len(fracs), -1, np.int64)
        out[clean & (t <= self.max_background_tissue_frac)] = QC_CLASSES.index("background")
        out[clean & (f <= self.max_other_frac) & (t >= self.min_tissue_frac)] = QC_CLASSES.index("tissue")
        out[(p <= self.max_other_frac) & (f >= self.min_fold_frac)] = QC_CLASSES.index("fold")
        out[p >= self.min_pen_frac] = QC_CLASSES.index("pen")
        return out


@dataclass(frozen=True)
class QCSource:
    """One image with its QC masks: a slide (boxes in level-0 px, read at `mpp`) or an in-memory image
    (boxes in image px, `rgb` set). `allowed`: the classes this source may honestly contribute."""

    name: str
    qc: SlideQC
    allowed: tuple[str, ...]
    slide: Path | None = None
    slide_mpp: float = 0.0  # level-0 um/px of `slide`
    rgb: np.ndarray | None = None
    width: int = 0
    height: int = 0


@dataclass(frozen=True)
class QCLabelSet:
    """Tiles (N, tile_px, tile_px, 3) uint8 with `tiles` rows: source, x, y, w, h (source px), the four
    mask fractions, label (index into `classes`) and split (train / val / test)."""

    images: np.ndarray
    tiles: pd.DataFrame
    classes: tuple[str, ...]

    @property
    def labels(self) -> np.ndarray:
        return self.tiles["label"].to_numpy(np.int64)

    @property
    def splits(self) -> np.ndarray:
        return self.tiles["split"].to_numpy(str)


def slide_qc_source(slide: Path, qc: SlideQC | None = None, allowed: tuple[str, ...] = QC_CLASSES,
                    params: QCParams | None = None) -> QCSource:
    """A slide with its QC outputs: `qc` as loaded by `load_qc`, or (None) the QC stage run on it now
    (`qc_slide` into a temporary folder, H&E, then `load_qc`) so the masks are exactly what `pluto qc` writes."""
    import tempfile

    from pluto.qc import load_qc
    from pluto.qc.detectors import load_detector
    from pluto.qc.params import QCParams
    from pluto.qc.run import qc_slide
    from pluto.slides import get_handle

    info = get_handle(slide).info
    if qc is None:
        params = params or QCParams()
        with tempfile.TemporaryDirectory() as tmp:
            qc_slide("slide", str(slide), "H&E", Path(tmp), params, load_detector(params.detector))
            qc = load_qc(Path(tmp), "slide")
    return QCSource(Path(slide).name, qc, allowed, slide=Path(slide), slide_mpp=info.mpp, width=info.width, height=info.height)


# labels.csv name labels (shared/data/artifacts/PROVENANCE.md) -> classes an image may contribute.
_TISSUE_PER_NAME = {"tissue": ("tissue",), "no-tissue": ("background",), "almost-white": ("background",), "": ("tissue", "background")}
ARTIFACT_THUMB_MPP = 32.0  # no mpp in the files: ~32 um/px estimated for the histolab diagnostic thumbnail (tests/qc)
ARTIFACT_TILE_MPP = 1.0  # histolab fixture tiles (levels 0-2 of unknown slides): the tile scale tests/qc uses


def artifact_sources(labels_csv: Path) -> list[QCSource]:
    """The pen-marked images of shared/data/artifacts as QC sources.

    Masks come from the same functions the QC stage runs (`tissue_mask` + the default detector) on
    the image itself; the file-name labels restrict what each image may contribute: pen only where
    the name says there is ink, tissue / background as the name says (thumbnails name neither, so
    both come from their masks). The images carry no mpp: masks use an assumed mpp (module constants),
    which only scales the morphology of the tissue mask.
    """
    import csv

    import pandas as pd
    from PIL import Image

    from pluto.eval.labeled import DatasetLayoutError, inside
    from pluto.qc.detectors import heuristic_detector
    from pluto.qc.slide_qc import SlideQC
    from pluto.qc.tissue import tissue_mask

    labels_csv = Path(labels_csv)
    if not labels_csv.is_file():
        raise DatasetLayoutError(f"{labels_csv}: artifact labels file not found")
    with labels_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    needed = {"filename", "tissue_per_name", "pen_per_name"}
    if not rows or not needed <= set(rows[0]):
        raise DatasetLayoutError(f"{labels_csv}: needs columns {sorted(needed)}")
    out = []
    for r in rows:
        tissue_name = r["tissue_per_name"].strip()
        if tissue_name not in _TISSUE_PER_NAME:
            raise DatasetLayoutError(f"{labels_csv}: {r['filename']}: unknown tissue_per_name {tissue_name!r}")
        allowed = _TISSUE_PER_NAME[tissue_name] + (() if r["pen_per_name"].strip() in ("", "none-in-name") else ("pen",))
        path = inside(labels_csv.parent, r["filename"])
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
        tissue = tissue_mask(rgb, ARTIFACT_THUMB_MPP if tissue_name == "" else ARTIFACT_TILE_MPP)
        masks = {"tissue": tissue, **heuristic_detector(rgb, tissue)}
        qc = SlideQC(r["filename"], masks, 1.0, pd.DataFrame())
        out.append(QCSource(r["filename"], qc, allowed, rgb=rgb, width=rgb.shape[1], height=rgb.shape[0]))
    return out


def _grid(width: int, height: int, side: int) -> np.ndarray:
    """(N, 4) [x, y, w, h] non-overlapping squares of `side` inside width x height (no overlap: no
    pixel is shared by two tiles, so neither by two splits)."""
    ys, xs = np.meshgrid(np.arange(0, height - side + 1, side), np.arange(0, width - side + 1, side), indexing="ij")
    return np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, side), np.full(xs.size, side)], 1).astype(np.int64)


def _read(src: QCSource, box: np.ndarray, mpp: float, tile_px: int) -> np.ndarray:
    if src.slide is not None:
        from pluto.slides import read_tile

        return read_tile(src.slide, int(box[0]), int(box[1]), mpp, tile_px)
    import cv2

    x, y, w, h = (int(v) for v in box)
    return cv2.resize(np.ascontiguousarray(src.rgb[y:y + h, x:x + w]), (tile_px, tile_px), interpolation=cv2.INTER_AREA)


def _balanced_split(labels: np.ndarray, n_per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Seeded pick of `n_per_class` rows per class, each class dealt 60/20/20 into train/val/test."""
    picked, splits = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))[:n_per_class]
        bounds = np.round(np.cumsum([f for _, f in QC_SPLIT_FRACS]) * len(idx)).astype(int)
        names = np.empty(len(idx), dtype=object)
        for (name, _), lo, hi in zip(QC_SPLIT_FRACS, np.r_[0, bounds[:-1]], bounds):
            names[lo:hi] = name
        picked.append(idx), splits.append(names)
    order = np.concatenate(picked)
    keep = np.argsort(order)  # source order, so the set does not depend on the class loop
    return order[keep], np.concatenate(splits)[keep]


def qc_label_set(sources: list[QCSource], tile_px: int = 112, mpp: float = 0.5, image_tile_px: int = 64,
                 rule: QCLabelRule = QCLabelRule(), max_per_class: int = 60, min_per_class: int = 10,
                 seed: int = 0) -> QCLabelSet:
    """Tiles labelled tissue / background / pen (/ fold) by QC mask fractions, balanced, with a seeded split.

    Each source is cut into non-overlapping squares (slides: `tile_px` px at `mpp` um/px; images:
    `image_tile_px` image px, resized to `tile_px`), scored with `SlideQC.score_boxes`, labelled by
    `rule`, and kept when the label is in the source's `allowed`. Classes with fewer than
    `min_per_class` tiles are dropped (fold, when the masks find too little); every kept class gets
    the same count, min(smallest class, `max_per_class`), drawn under `seed` and dealt 60/20/20.
    """
    import pandas as pd

    from pluto.eval.labeled import DatasetLayoutError
    from pluto.qc.slide_qc import MASK_NAMES

    rows = []
    for i, src in enumerate(sources):
        side = image_tile_px if src.slide is None else int(round(tile_px * mpp / src.slide_mpp))
        boxes = _grid(src.width, src.height, side)
        if not len(boxes):
            continue
        fr = src.qc.score_boxes(boxes)[[f"{n}_frac" for n in MASK_NAMES]]
        lab = rule.label(fr)
        ok = (lab >= 0) & np.isin(lab, [QC_CLASSES.index(c) for c in src.allowed])
        rows.append(pd.DataFrame({"source_index": i, "source": src.name, "x": boxes[ok, 0], "y": boxes[ok, 1],
                                  "w": boxes[ok, 2], "h": boxes[ok, 3]}).join(fr[ok].reset_index(drop=True)).assign(label=lab[ok]))
    cands = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["label"])
    counts = cands["label"].value_counts()
    kept_ids = sorted(int(c) for c, n in counts.items() if n >= min_per_class)
    if len(kept_ids) < 2:
        raise DatasetLayoutError(f"QC label set: fewer than 2 classes with {min_per_class}+ tiles "
                                 f"({ {QC_CLASSES[int(c)]: int(n) for c, n in counts.items()} })")
    cands = cands[cands["label"].isin(kept_ids)].reset_index(drop=True)
    n = min(max_per_class, int(counts[kept_ids].min()))
    idx, splits = _balanced_split(cands["label"].to_numpy(), n, np.random.default_rng(seed))
    tiles = cands.iloc[idx].reset_index(drop=True)
    tiles["label"] = tiles["label"].map({c: k for k, c in enumerate(kept_ids)}).astype(np.int64)
    tiles["split"] = splits.astype(str)
    images = np.stack([_read(sources[s], b, mpp, tile_px) for s, b in
                       zip(tiles["source_index"], tiles[["x", "y", "w", "h"]].to_numpy())])
    classes = tuple(QC_CLASSES[c] for c in kept_ids)
    log.info("qc label set: %d tiles per class %s from %d sources (candidates %s)", n, classes, len(sources),
             {QC_CLASSES[int(c)]: int(k) for c, k in counts.items()})
    return QCLabelSet(images, tiles.drop(columns="source_index"), classes)


def bundled_qc_label_set(slide: Path, artifacts_labels_csv: Path | None = None, tile_px: int = 112,
                         seed: int = 0) -> QCLabelSet:
    """The suite's `qc_labels` dataset: QC of `slide` (no ink on it: tissue / background only, fold if the
    masks find enough) plus, when given, the pen-marked artifact images listed in `artifacts_labels_csv`."""
    sources = [slide_qc_source(Path(slide), allowed=("background", "tissue", "fold"))]
    if artifacts_labels_csv:
        sources += artifact_sources(Path(artifacts_labels_csv))
    return qc_label_set(sources, tile_px=tile_px, seed=seed)
