"""Adapters for the public benchmarks of PLUTO-4 Table 1 / Midnight Table 1, read from a user's local copy.

kaiko-eva (`eva.vision.data.datasets`, imported lazily: pluto.eval imports with torch+timm alone) decides
membership, labels and splits, so our numbers use EVA's splits: BACH's patient-aware ranges,
BreakHis' validation patients, Gleason's microarray split, CoNSeP's patch sampling, MoNuSAC's
polygon rasterisation. Each adapter first checks the layout and raises `DatasetLayoutError`
naming what is missing. A partial copy still runs, but the returned set says so: its `incomplete`
is why it is not the complete benchmark ("1,203 of 6,000 images (train)": eva's own integrity
check, `validate()`, failed; PANDA: the same counts eva's PANDA class checks), None when complete.
The suite copies it into `EvalRecord.extra["incomplete"]`, and published.py shows no published
number beside an incomplete copy.

Slide-level sets (PANDA, PANDA-Small, Camelyon16 and its small variant) carry their tiles as eva's
config samples them: eva's own `ForegroundGridSampler` (max_samples = the task's pad_size, seed 42)
at the config's resolution, so a bag holds the very tiles eva would embed. PANDA keeps its own reader (eva's class
downloads its label table at construction) with eva's stratified split; Camelyon16 uses eva's
class for labels and its file-count check. HEST has no eva class and is read in hest_data.py.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from pluto.eval.images import files_fingerprint, resize_and_crop
from pluto.eval.labeled import DatasetLayoutError, LabeledImages, inside, require

log = logging.getLogger(__name__)

# The split eva reports per benchmark: "results are reported on the 'test' split if available and otherwise
# on the 'validation' split" (eva 0.4.5 docs/leaderboards.md), i.e. the split of the config's `test` dataset,
# else of its `val` one (tied to the vendored eva_configs by tests/eval/test_datasets.py). A suite task
# that names no split scores this one (TaskConfig), and published numbers need it (published.py).
EVA_REPORTED_SPLIT = {"bach": "val", "bracs": "test", "breakhis": "val", "crc": "val", "gleason_arvaniti": "val",
                      "mhist": "test", "pcam": "test", "panda": "test", "panda_small": "test", "camelyon16": "test",
                      "camelyon16_small": "test", "consep": "val", "monusac": "test"}


def eva_dataset_class(name: str) -> type:
    """A class of `eva.vision.data.datasets`, or a clear error when kaiko-eva[vision] is not installed."""
    try:
        from eva.vision.data import datasets
    except ImportError as exc:
        raise DatasetLayoutError(f"benchmark adapters need kaiko-eva[vision] (pip install 'kaiko-eva[vision]'): {exc}") from exc
    return getattr(datasets, name)


def _shortfall(message: str, split: str | None, unit: str) -> str:
    """eva's integrity-check message as a short reason: "32 of 7,180 images (val)", else its first sentence."""
    m = re.search(r"length \((\d+)\) does not match the expected one \((\d+)\)", message)
    found_expected = (m[1], m[2]) if m else None
    m = None if m else re.search(r"Expected (\d+) \w+\W.*?found (\d+)", message)
    found_expected = (m[2], m[1]) if m else found_expected
    where = f" ({split})" if split else ""
    if found_expected is None:
        return message.split(". ")[0] + where
    return f"{int(found_expected[0]):,} of {int(found_expected[1]):,} {unit}{where}"


def _validated(ds, cls_name: str, root: Path, split: str | None, unit: str = "images") -> str | None:
    """eva's own integrity check (the full benchmark's counts): None when it passes, else the short reason."""
    try:
        ds.validate()
    except ValueError as exc:
        log.warning("%s split %s at %s is not the complete benchmark (%s): numbers are not comparable to published ones",
                    cls_name, split, root, exc)
        return _shortfall(str(exc), split, unit)
    return None


def _joined(reasons) -> str | None:
    return "; ".join(r for r in reasons if r) or None


def _eva_split(cls_name: str, root: Path, split: str | None, **kwargs: Any) -> tuple[Any, str | None]:
    """An eva dataset for one split, prepared and configured, and why it is not the complete benchmark (or None)."""
    ds = eva_dataset_class(cls_name)(root=str(root), split=split, **kwargs)
    try:
        ds.prepare_data()
        ds.configure()
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise DatasetLayoutError(f"{root}: {cls_name} split {split!r}: {exc}") from exc
    return ds, _validated(ds, cls_name, root, split)


def _eva_images(name: str, root: Path, cls_name: str, base: Callable[[str | None], Path], splits: tuple[str | None, ...],
                **kwargs: Any) -> LabeledImages:
    """LabeledImages from eva datasets: path = base(split) / eva's `filename(i)`, label = classes[eva's target]."""
    paths, labels, names, groups, reasons = [], [], [], [], []
    classes: tuple[str, ...] = ()
    for split in splits:
        ds, reason = _eva_split(cls_name, root, split, **kwargs)
        reasons.append(reason)
        classes = tuple(ds.classes)
        for i in range(len(ds)):
            p = inside(base(split), ds.filename(i))  # an annotation row must not name a file outside the copy
            if not p.is_file():
                raise DatasetLayoutError(f"{root}: {name} image {p} listed but missing")
            paths.append(p), labels.append(classes[int(ds.load_target(i))]), names.append(split)
            groups.append(str((ds.load_metadata(i) or {}).get("patient_id", "")))
    if not paths:
        raise DatasetLayoutError(f"{root}: no {name} images found")
    return LabeledImages(name, root, tuple(paths), tuple(labels), classes, tuple(names) if splits != (None,) else None,
                         tuple(groups) if any(groups) else None, incomplete=_joined(reasons))


BACH_CLASSES = ("Benign", "InSitu", "Invasive", "Normal")
BACH_N_IMAGES = 400  # eva's patient-aware index ranges are defined on the full, sorted set


def load_bach(root: Path) -> LabeledImages:
    """`ICIAR2018_BACH_Challenge/Photos/<class>/*.tif`, all 400: eva's patient-aware train/val index ranges
    are defined on the full sorted set, so a partial copy would mix patients across splits."""
    root = Path(root)
    photos = root / "ICIAR2018_BACH_Challenge" / "Photos"
    require(root, *(f"ICIAR2018_BACH_Challenge/Photos/{c}" for c in BACH_CLASSES))
    n = sum(1 for c in BACH_CLASSES for _ in (photos / c).glob("*.tif"))
    if n != BACH_N_IMAGES:
        raise DatasetLayoutError(f"{photos}: BACH needs all {BACH_N_IMAGES} .tif photos for eva's patient-aware split, found {n}")
    return _eva_images("bach", root, "BACH", lambda _: photos, ("train", "val"))


CRC_CLASSES = ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")
CRC_DIRS = {"train": "NCT-CRC-HE-100K", "val": "CRC-VAL-HE-7K"}


def load_crc(root: Path) -> LabeledImages:
    """`NCT-CRC-HE-100K/<class>/*.tif` (train) and `CRC-VAL-HE-7K/<class>/*.tif` (val, the reported split)."""
    root = Path(root)
    require(root, *CRC_DIRS.values())
    return _eva_images("crc", root, "CRC", lambda s: root / CRC_DIRS[s], ("train", "val"))


BRACS_CLASSES = ("0_N", "1_PB", "2_UDH", "3_FEA", "4_ADH", "5_DCIS", "6_IC")


def load_bracs(root: Path) -> LabeledImages:
    """`BRACS_RoI/latest_version/{train,val,test}/<class>/*.png`."""
    root = Path(root)
    require(root, *(f"BRACS_RoI/latest_version/{s}" for s in ("train", "val", "test")))
    return _eva_images("bracs", root, "BRACS", lambda _: root / "BRACS_RoI" / "latest_version", ("train", "val", "test"))


BREAKHIS_CLASSES = ("TA", "MC", "F", "DC")  # eva keeps these four subtypes, 40X only


def load_breakhis(root: Path, magnification: str = "40X") -> LabeledImages:
    """`BreaKHis_v1/histology_slides/breast/**/<mag>/SOB_<B|M>_<type>-<yy>-<patient>-<mag>-<n>.png`.

    eva's split: its 14 validation patients -> val, the rest train; groups = patient id.
    """
    root = Path(root)
    require(root, "BreaKHis_v1/histology_slides/breast")
    return _eva_images("breakhis", root, "BreaKHis", lambda _: root, ("train", "val"), magnifications=[magnification])


MHIST_CLASSES = ("SSA", "HP")


def load_mhist(root: Path) -> LabeledImages:
    """`images/*.png` + `annotations.csv` (Image Name, Majority Vote Label, Partition train|test)."""
    root = Path(root)
    require(root, "images", "annotations.csv")
    with (root / "annotations.csv").open(newline="") as f:
        header = next(csv.reader(f), [])
    need = {"Image Name", "Majority Vote Label", "Partition"}
    if not need <= set(header):
        raise DatasetLayoutError(f"{root / 'annotations.csv'}: needs columns {sorted(need)}")
    return _eva_images("mhist", root, "MHIST", lambda _: root / "images", ("train", "test"))


GLEASON_CLASSES = ("benign", "gleason_3", "gleason_4", "gleason_5")


def load_gleason_arvaniti(root: Path) -> LabeledImages:
    """`train_validation_patches_750/**/*.jpg` + `test_patches_750/patho_1/**/*.jpg`; names `<TMA>_..._<label>.jpg`.

    eva's split: TMA ZT76 = val, ZT111/ZT199/ZT204 = train, test patches (pathologist 1) = test. eva's
    gleason_arvaniti.yaml embeds train and val only and reports val, so a task scores val by default
    (EVA_REPORTED_SPLIT); test stays available to a task that names it, without published numbers.
    """
    root = Path(root)
    require(root, "train_validation_patches_750", "test_patches_750/patho_1")
    return _eva_images("gleason_arvaniti", root, "GleasonArvaniti", lambda _: root, ("train", "val", "test"))


PCAM_SPLITS = {"train": "train", "val": "valid", "test": "test"}
PCAM_FILES = tuple(f"camelyonpatch_level_2_split_{s}_{k}.h5" for s in PCAM_SPLITS.values() for k in ("x", "y"))


class EvaImages(Dataset):
    """Images of eva datasets (concatenated splits) as uint8 CHW at `input_px`; eva reads each item.

    `files` (the data on disk) make the fingerprint: path, size and mtime of each.
    """

    def __init__(self, parts: list, input_px: int, files: tuple[Path, ...]) -> None:
        self.parts, self.input_px, self.files = parts, int(input_px), files
        self.offsets = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> torch.Tensor:
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        chw = self.parts[k].load_data(i - int(self.offsets[k]))
        return resize_and_crop(np.asarray(chw).transpose(1, 2, 0), self.input_px)

    @property
    def fingerprint(self) -> str:
        return files_fingerprint(f"eva:{[type(p).__name__ for p in self.parts]}:{self.input_px}", self.files)


@dataclass(frozen=True)
class EvaImageSet:
    """A benchmark stored in container files (PCam's HDF5): items stay in the files, eva reads them lazily."""

    name: str
    root: Path
    parts: tuple  # eva datasets, one per split
    label_ids: np.ndarray
    splits: tuple[str, ...]
    classes: tuple[str, ...]
    files: tuple[Path, ...]
    incomplete: str | None = None  # why this is not the complete benchmark; None = complete

    def dataset(self, input_px: int) -> EvaImages:
        return EvaImages(list(self.parts), input_px, self.files)


def load_pcam(root: Path) -> EvaImageSet:
    """PatchCamelyon HDF5 files (96 px at ~1 um/px), train/val/test as in eva's `PatchCamelyon`."""
    root = Path(root)
    require(root, *PCAM_FILES)
    import h5py  # installed with kaiko-eva[vision]; one read per label file instead of one per item

    parts, labels, splits, reasons = [], [], [], []
    for split, stem in PCAM_SPLITS.items():
        ds, reason = _eva_split("PatchCamelyon", root, split)
        reasons.append(reason)
        with h5py.File(root / f"camelyonpatch_level_2_split_{stem}_y.h5", "r") as fy:
            y = np.asarray(fy["y"]).reshape(-1).astype(np.int64)
        if len(y) != len(ds):
            raise DatasetLayoutError(f"{root}: PCam {split} has {len(ds)} images but {len(y)} labels")
        parts.append(ds), labels.append(y), splits.extend([split] * len(y))
    return EvaImageSet("pcam", root, tuple(parts), np.concatenate(labels), tuple(splits), tuple(parts[0].classes),
                       tuple(root / f for f in PCAM_FILES), _joined(reasons))


@dataclass(frozen=True)
class LabeledSlides:
    """Slide-level task: one label per whole-slide image and, per slide, the tiles of its bag."""

    name: str
    root: Path
    paths: tuple[Path, ...]
    labels: tuple[str, ...]
    classes: tuple[str, ...]
    splits: tuple[str, ...]
    tiles: tuple[Any, ...] = ()  # per slide, a tile manifest (pandas: path, x_l0, y_l0, mpp, tile_px) of eva's sampler
    incomplete: str | None = None  # why this is not the complete benchmark; None = complete

    @property
    def label_ids(self) -> np.ndarray:
        return np.array([self.classes.index(x) for x in self.labels], dtype=np.int64)


def _with_eva_tiles(slides: LabeledSlides, task: str) -> LabeledSlides:
    """`slides` with each slide's tiles as eva's `task` config samples them: `ForegroundGridSampler(max_samples=
    pad_size)` (seed 42, 35% foreground) at the config's resolution, read by eva's openslide backend.
    A slide without one foreground tile is dropped (warning): eva embeds nothing for it either."""
    import openslide
    import pandas as pd
    from eva.vision.data.wsi.patching import samplers
    from eva.vision.data.wsi.patching.coordinates import PatchCoordinates

    from pluto.eval.eva_protocol import EVA_TASKS
    from pluto.eval.slide_bags import EVA_SLIDE_TILES

    mpp, px = EVA_SLIDE_TILES[task]
    sampler = samplers.ForegroundGridSampler(max_samples=EVA_TASKS[task].pad_size)
    keep, tiles = [], []
    for i, path in enumerate(slides.paths):
        try:
            xy = PatchCoordinates.from_file(str(path), px, px, sampler, mpp, backend="openslide").x_y
        except (ValueError, OSError, openslide.OpenSlideError) as exc:
            raise DatasetLayoutError(f"{path}: eva cannot sample {px}-px tiles at {mpp} um/px from this slide: {exc}") from exc
        if not xy:
            log.warning("%s: no foreground tile for eva's sampler; the slide is left out, as eva leaves it out", path)
            continue
        keep.append(i)
        tiles.append(pd.DataFrame({"path": str(path), "x_l0": [int(x) for x, _ in xy], "y_l0": [int(y) for _, y in xy],
                                   "mpp": float(mpp), "tile_px": int(px)}))
    if not keep:
        raise DatasetLayoutError(f"{slides.root}: no {slides.name} slide has a foreground tile for eva's sampler")
    pick = lambda items: tuple(items[i] for i in keep)  # noqa: E731
    return dataclasses.replace(slides, paths=pick(slides.paths), labels=pick(slides.labels), splits=pick(slides.splits),
                               tiles=tuple(tiles))


PANDA_CLASSES = ("0", "1", "2", "3", "4", "5")  # ISUP grade
PANDA_SPLIT_SEED = 42  # eva's PANDA class default; no config sets it
PANDA_TABLE = "train_with_noisy_labels.csv"  # eva's label table (analokmaus/kaggle-panda-challenge-public train.csv)
PANDA_N_SLIDES = 10_616  # rows of eva's md5-pinned table = Kaggle's train_images (eva docs/datasets/panda.md)


def _panda_shortfall(table: Path, n_rows: int, n_slides: int) -> str | None:
    """The counts eva's PANDA class checks (one slide per row of its full table), as a reason, or None."""
    return _joined([
        None if table.name == PANDA_TABLE else f"{table.name} has no noise_ratio_10: not eva's noisy-label filter nor its split",
        None if n_rows == PANDA_N_SLIDES else f"{table.name} has {n_rows:,} of {PANDA_N_SLIDES:,} rows",
        None if n_slides == n_rows else f"{n_slides:,} of {n_rows:,} slides",
    ])


def _panda(root: Path, task: str, cls_name: str) -> LabeledSlides:
    """`train_images/<image_id>.tiff` + `train_with_noisy_labels.csv` (eva's table) or Kaggle's `train.csv`.

    As eva's `cls_name` (PANDA / PANDASmall): with the noisy-label table only rows with
    `noise_ratio_10 != 0` are kept, then `eva.core.data.splitting.stratified_split` with the class's
    train/val/test ratios (PANDA 70/15/15, PANDASmall 10/5/5) and seed 42.
    """
    root = Path(root)
    require(root, "train_images")
    table = next((root / n for n in (PANDA_TABLE, "train.csv") if (root / n).is_file()), None)
    if table is None:
        raise DatasetLayoutError(f"{root}: expected {PANDA_TABLE!r} (eva's label table) or 'train.csv' (image_id, isup_grade)")
    with table.open(newline="") as f:
        rows = {r["image_id"]: r for r in csv.DictReader(f)}
    slides = sorted((root / "train_images").glob("*.tiff"))
    unknown = [p.name for p in slides if p.stem not in rows]
    if not slides or unknown:
        raise DatasetLayoutError(f"{root}: {'no slides in train_images' if not slides else f'no grade in {table.name} for {unknown[:3]}'}")
    incomplete = _panda_shortfall(table, len(rows), len(slides))
    slides = [p for p in slides if float(rows[p.stem].get("noise_ratio_10") or 1) != 0]
    grades = [rows[p.stem]["isup_grade"] for p in slides]
    from eva.core.data import splitting

    eva_cls = eva_dataset_class(cls_name)
    idx = splitting.stratified_split(samples=slides, targets=[int(g) for g in grades], train_ratio=eva_cls._train_split_ratio,
                                     val_ratio=eva_cls._val_split_ratio, test_ratio=eva_cls._test_split_ratio, seed=PANDA_SPLIT_SEED)
    split_of = {i: s for s, ids in zip(("train", "val", "test"), idx) for i in (ids or [])}
    keep = sorted(split_of)  # PANDASmall's ratios sum to 0.2: the other 80% are in no split
    slides_set = LabeledSlides(task, root, tuple(slides[i] for i in keep), tuple(grades[i] for i in keep), PANDA_CLASSES,
                               tuple(split_of[i] for i in keep), incomplete=incomplete)
    return _with_eva_tiles(slides_set, task)


def load_panda(root: Path) -> LabeledSlides:
    """eva's PANDA (panda.yaml): 70/15/15 of the filtered slides, up to 1,000 tiles at 0.5 um/px per slide."""
    return _panda(root, "panda", "PANDA")


def load_panda_small(root: Path) -> LabeledSlides:
    """eva's PANDASmall (panda_small.yaml): 10/5/5 of the filtered slides, up to 200 tiles at 0.5 um/px per slide."""
    return _panda(root, "panda_small", "PANDASmall")


CAMELYON16_DIRS = ("training/normal", "training/tumor", "testing/images")


def _camelyon16(root: Path, task: str) -> LabeledSlides:
    """`training/{normal,tumor}/*.tif`, `testing/images/*.tif` + `testing/reference.csv` (id, Normal|Tumor), as eva's
    `Camelyon16`: training slides in eva's validation list (PatchCamelyon's) are val, the others train, testing is
    test; labels are eva's (name prefix, reference.csv) and so is the file-count check (216 / 54 / 129)."""
    root = Path(root)
    require(root, *CAMELYON16_DIRS, "testing/reference.csv")
    eva_cls = eva_dataset_class("Camelyon16")
    training = sorted((root / "training").glob("*/*.tif"))
    listed = {"train": [p for p in training if p.stem not in eva_cls._val_slides],
              "val": [p for p in training if p.stem in eva_cls._val_slides],
              "test": sorted((root / "testing" / "images").glob("*.tif"))}
    paths, labels, splits, reasons = [], [], [], []
    classes: tuple[str, ...] = ()
    for split, files in listed.items():
        ds = eva_cls(root=str(root), sampler=None, split=split)  # the sampler is used by configure() only
        classes = tuple(ds.classes)
        try:
            annotations = ds.annotations
            labels += [annotations[p.stem] for p in files]
        except KeyError as exc:
            raise DatasetLayoutError(f"{root / 'testing/reference.csv'}: no label for test slide {exc}") from exc
        except ValueError as exc:  # a training slide not named normal_* / tumor_*, an unreadable reference.csv
            raise DatasetLayoutError(f"{root / ('testing/reference.csv' if split == 'test' else 'training')}: {exc}") from exc
        reasons.append(_validated(ds, "Camelyon16", root, split, "slides"))
        paths += files
        splits += [split] * len(files)
    if not paths:
        raise DatasetLayoutError(f"{root}: no Camelyon16 slides (.tif) found")
    slides = LabeledSlides(task, root, tuple(paths), tuple(labels), classes, tuple(splits), incomplete=_joined(reasons))
    return _with_eva_tiles(slides, task)


def load_camelyon16(root: Path) -> LabeledSlides:
    """eva's Camelyon16 (camelyon16.yaml): up to 10,000 tiles at 0.25 um/px per slide."""
    return _camelyon16(root, "camelyon16")


def load_camelyon16_small(root: Path) -> LabeledSlides:
    """eva's Camelyon16 with camelyon16_small.yaml's sampler: up to 1,000 tiles at 0.25 um/px per slide."""
    return _camelyon16(root, "camelyon16_small")


@dataclass(frozen=True)
class SegmentationSet:
    """eva segmentation datasets per split; `read(i)` -> (RGB H x W x 3 uint8, class-index mask H x W int64)."""

    name: str
    root: Path
    parts: tuple  # eva datasets
    part_splits: tuple[str, ...]
    classes: tuple[str, ...]  # index 0 = background
    incomplete: str | None = None  # why this is not the complete benchmark; None = complete

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(s for p, s in zip(self.parts, self.part_splits) for _ in range(len(p)))

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        for p in self.parts:
            if i < len(p):
                return np.asarray(p.load_data(i)).transpose(1, 2, 0).astype(np.uint8), np.asarray(p.load_target(i)).astype(np.int64)
            i -= len(p)
        raise IndexError(i)


def _segmentation(name: str, root: Path, cls_name: str, splits: tuple[str, ...], **kwargs: Any) -> SegmentationSet:
    parts, reasons = zip(*(_eva_split(cls_name, root, s, **kwargs) for s in splits))
    if not sum(len(p) for p in parts):
        raise DatasetLayoutError(f"{root}: no {name} images found")
    return SegmentationSet(name, root, tuple(parts), splits, tuple(parts[0].classes), _joined(reasons))


CONSEP_CLASSES = ("background", "other", "inflammatory", "epithelial", "spindle-shaped")


def load_consep(root: Path) -> SegmentationSet:
    """`{Train,Test}/Images/*.png` + `{Train,Test}/Labels/<name>.mat`; Train = train, Test = val (as eva).

    As eva's consep.yaml: every 250-px patch of a grid at 0.25 um/px (`GridSampler()`; the class's
    default would sample 25 foreground patches), classes merged (3&4 -> epithelial, 5-7 -> spindle-shaped).
    """
    root = Path(root)
    require(root, "Train/Images", "Train/Labels", "Test/Images", "Test/Labels")
    for folder in ("Train", "Test"):
        for p in sorted((root / folder / "Images").glob("*.png")):
            if not p.name.startswith(f"{folder.lower()}_"):  # eva finds a patch's label folder by this prefix
                raise DatasetLayoutError(f"{p}: CoNSeP image names in {folder}/Images start with '{folder.lower()}_'")
            if not (root / folder / "Labels" / f"{p.stem}.mat").is_file():
                raise DatasetLayoutError(f"{p}: label file {folder}/Labels/{p.stem}.mat missing")
    from eva.vision.data.wsi.patching.samplers import GridSampler

    return _segmentation("consep", root, "CoNSeP", ("train", "val"), sampler=GridSampler())


MONUSAC_CLASSES = ("Background", "Epithelial", "Lymphocyte", "Neutrophil", "Macrophage", "Ambiguous")
MONUSAC_DIRS = {"train": "MoNuSAC_images_and_annotations", "test": "MoNuSAC Testing Data and Annotations"}


def load_monusac(root: Path) -> SegmentationSet:
    """`MoNuSAC_images_and_annotations/<patient>/*.tif` (+ same-name .xml) and the testing folder; eva rasterises the XML."""
    root = Path(root)
    require(root, *MONUSAC_DIRS.values())
    for folder in MONUSAC_DIRS.values():
        for p in sorted((root / folder).rglob("*.tif")):
            if not p.with_suffix(".xml").is_file():
                raise DatasetLayoutError(f"{p}: annotation {p.with_suffix('.xml').name} missing")
    return _segmentation("monusac", root, "MoNuSAC", ("train", "test"), export_masks=False)


def load_hest(root: Path):
    from pluto.eval.hest_data import load_hest_task

    return load_hest_task(root)


ADAPTERS = {"bach": load_bach, "bracs": load_bracs, "breakhis": load_breakhis, "crc": load_crc, "mhist": load_mhist,
            "gleason_arvaniti": load_gleason_arvaniti, "pcam": load_pcam, "panda": load_panda, "panda_small": load_panda_small,
            "camelyon16": load_camelyon16, "camelyon16_small": load_camelyon16_small, "consep": load_consep,
            "monusac": load_monusac, "hest": load_hest}
