"""Adapters for the public benchmarks of PLUTO-4 Table 1 / Midnight Table 1, read from a user's local copy.

kaiko-eva 0.4.5's `eva.vision` cannot be imported in this stack (it needs MONAI, which is not
pinned), so the layouts, class lists and split rules below follow eva's dataset classes
(`eva/vision/data/datasets/{classification,segmentation}/*.py`) without importing them. Each
adapter checks the layout first and raises `DatasetLayoutError` naming what is missing.
"""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pluto.eval.labeled import DatasetLayoutError, LabeledImages, require

IMAGE_EXTS = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


def _class_folders(name: str, root: Path, base: Path, classes: tuple[str, ...], split: str | None = None) -> LabeledImages:
    """Images in `base/<class>/...`; every class folder must exist."""
    require(base, *classes)
    paths, labels = [], []
    for c in classes:
        for p in sorted((base / c).rglob("*")):
            if p.suffix.lower() in IMAGE_EXTS:
                paths.append(p), labels.append(c)
    splits = (split,) * len(paths) if split else None
    return LabeledImages(name, root, tuple(paths), tuple(labels), classes, splits)


def _concat(name: str, root: Path, parts: list[LabeledImages]) -> LabeledImages:
    return LabeledImages(name, root, sum((p.paths for p in parts), ()), sum((p.labels for p in parts), ()),
                         parts[0].classes, sum((p.splits for p in parts), ()))


BACH_CLASSES = ("Benign", "InSitu", "Invasive", "Normal")
# eva's patient-aware split of the 400 sorted BACH photos (index ranges, end exclusive)
_BACH_VAL_RANGES = ((41, 59), (60, 90), (139, 169), (240, 258), (260, 273), (345, 368))


def load_bach(root: Path) -> LabeledImages:
    """`ICIAR2018_BACH_Challenge/Photos/<class>/*.tif`; eva's patient-aware train/val split when all 400 are there."""
    root = Path(root)
    base = root / "ICIAR2018_BACH_Challenge" / "Photos"
    ds = _class_folders("bach", root, base, BACH_CLASSES)
    if len(ds.paths) != 400:
        return ds
    val = {i for a, b in _BACH_VAL_RANGES for i in range(a, b)}
    splits = tuple("val" if i in val else "train" for i in range(400))
    return LabeledImages("bach", root, ds.paths, ds.labels, ds.classes, splits)


CRC_CLASSES = ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")


def load_crc(root: Path) -> LabeledImages:
    """`NCT-CRC-HE-100K/<class>/` (train) and `CRC-VAL-HE-7K/<class>/` (val, the reported split)."""
    root = Path(root)
    require(root, "NCT-CRC-HE-100K", "CRC-VAL-HE-7K")
    return _concat("crc", root, [_class_folders("crc", root, root / "NCT-CRC-HE-100K", CRC_CLASSES, "train"),
                                 _class_folders("crc", root, root / "CRC-VAL-HE-7K", CRC_CLASSES, "val")])


BRACS_CLASSES = ("0_N", "1_PB", "2_UDH", "3_FEA", "4_ADH", "5_DCIS", "6_IC")


def load_bracs(root: Path) -> LabeledImages:
    """`BRACS_RoI/latest_version/{train,val,test}/<class>/*.png`."""
    root = Path(root)
    base = root / "BRACS_RoI" / "latest_version"
    require(root, *(f"BRACS_RoI/latest_version/{s}" for s in ("train", "val", "test")))
    return _concat("bracs", root, [_class_folders("bracs", root, base / s, BRACS_CLASSES, s) for s in ("train", "val", "test")])


BREAKHIS_CLASSES = ("TA", "MC", "F", "DC")  # eva keeps these four subtypes, 40X only


def load_breakhis(root: Path, magnification: str = "40X") -> LabeledImages:
    """`BreaKHis_v1/histology_slides/breast/**/<mag>/SOB_<B|M>_<type>-<yy>-<patient>-<mag>-<n>.png`; groups = patient."""
    root = Path(root)
    require(root, "BreaKHis_v1/histology_slides/breast")
    files = sorted((root / "BreaKHis_v1/histology_slides/breast").rglob(f"{magnification}/*.png"))
    keep = [(p, p.name.split("-")[0].split("_")[-1], p.name.split("-")[2]) for p in files]
    keep = [k for k in keep if k[1] in BREAKHIS_CLASSES]
    if not keep:
        raise DatasetLayoutError(f"{root}: no {magnification} BreakHis images of classes {BREAKHIS_CLASSES}")
    paths, labels, groups = zip(*keep)
    return LabeledImages("breakhis", root, paths, labels, BREAKHIS_CLASSES, groups=groups)


MHIST_CLASSES = ("SSA", "HP")


def load_mhist(root: Path) -> LabeledImages:
    """`images/*.png` + `annotations.csv` (Image Name, Majority Vote Label, Partition train|test)."""
    root = Path(root)
    require(root, "images", "annotations.csv")
    with (root / "annotations.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"Image Name", "Majority Vote Label", "Partition"}
    if not rows or not need <= set(rows[0]):
        raise DatasetLayoutError(f"{root / 'annotations.csv'}: needs columns {sorted(need)}")
    paths = tuple(root / "images" / r["Image Name"] for r in rows)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DatasetLayoutError(f"{root}: {len(missing)} annotated image(s) missing, e.g. {missing[0]}")
    return LabeledImages("mhist", root, paths, tuple(r["Majority Vote Label"] for r in rows), MHIST_CLASSES,
                         tuple(r["Partition"] for r in rows))


GLEASON_CLASSES = ("benign", "gleason_3", "gleason_4", "gleason_5")


def load_gleason_arvaniti(root: Path) -> LabeledImages:
    """`train_validation_patches_750/**/*.jpg` + `test_patches_750/patho_1/**/*.jpg`; names `<TMA>_..._<label>.jpg`.

    eva's split: TMA ZT76 = val, ZT111/ZT199/ZT204 = train, test patches (pathologist 1) = test.
    """
    root = Path(root)
    require(root, "train_validation_patches_750", "test_patches_750/patho_1")
    files = sorted((root / "train_validation_patches_750").rglob("*.jpg")) + sorted((root / "test_patches_750/patho_1").rglob("*.jpg"))
    paths, labels, splits = [], [], []
    for p in files:
        tma = p.stem.split("_")[0]
        split = "test" if "test_patches_750" in p.parts else "val" if tma == "ZT76" else "train" if tma in {"ZT111", "ZT199", "ZT204"} else None
        if split is None:
            raise DatasetLayoutError(f"{p}: unknown tissue microarray {tma!r} (expected ZT76, ZT111, ZT199, ZT204)")
        paths.append(p), labels.append(GLEASON_CLASSES[int(p.stem.split("_")[-1])]), splits.append(split)
    return LabeledImages("gleason_arvaniti", root, tuple(paths), tuple(labels), GLEASON_CLASSES, tuple(splits))


@dataclass(frozen=True)
class LabeledSlides:
    """Slide-level task: one label per whole-slide image (bags of tile embeddings come from tiling)."""

    name: str
    root: Path
    paths: tuple[Path, ...]
    labels: tuple[str, ...]
    classes: tuple[str, ...]


PANDA_CLASSES = ("0", "1", "2", "3", "4", "5")  # ISUP grade


def load_panda(root: Path) -> LabeledSlides:
    """`train_images/<image_id>.tiff` + `train.csv` (or eva's `train_with_noisy_labels.csv`) with image_id, isup_grade."""
    root = Path(root)
    require(root, "train_images")
    table = next((root / n for n in ("train_with_noisy_labels.csv", "train.csv") if (root / n).is_file()), None)
    if table is None:
        raise DatasetLayoutError(f"{root}: expected 'train.csv' or 'train_with_noisy_labels.csv' (image_id, isup_grade)")
    with table.open(newline="") as f:
        grade = {r["image_id"]: r["isup_grade"] for r in csv.DictReader(f)}
    slides = sorted((root / "train_images").glob("*.tiff"))
    unknown = [p.name for p in slides if p.stem not in grade]
    if not slides or unknown:
        raise DatasetLayoutError(f"{root}: {'no slides in train_images' if not slides else f'no grade in {table.name} for {unknown[:3]}'}")
    return LabeledSlides("panda", root, tuple(slides), tuple(grade[p.stem] for p in slides), PANDA_CLASSES)


@dataclass(frozen=True)
class SegmentationSet:
    name: str
    root: Path
    images: tuple[Path, ...]
    splits: tuple[str, ...]
    classes: tuple[str, ...]  # index 0 = background
    masks: tuple[Path, ...]  # annotation file per image (format depends on the benchmark)

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(RGB H x W x 3 uint8, class-index mask H x W int64)."""
        from PIL import Image

        rgb = np.asarray(Image.open(self.images[i]).convert("RGB"))
        reader = _consep_mask if self.name == "consep" else _monusac_mask
        return rgb, reader(self.masks[i], rgb.shape[:2], self.classes)


CONSEP_CLASSES = ("background", "other", "inflammatory", "epithelial", "spindle-shaped")


def _consep_mask(path: Path, hw: tuple[int, int], classes: tuple[str, ...]) -> np.ndarray:
    """`type_map` of the .mat file, with eva's merges: 3&4 -> epithelial (3), 5,6,7 -> spindle-shaped (4)."""
    from scipy.io import loadmat

    m = np.asarray(loadmat(path)["type_map"]).astype(np.int64)
    m = np.where(m == 4, 3, m)
    return np.where(m > 4, 4, m)




def load_consep(root: Path) -> SegmentationSet:
    """`{Train,Test}/Images/*.png` + `{Train,Test}/Labels/<name>.mat`; Train = train, Test = val (as eva)."""
    root = Path(root)
    require(root, "Train/Images", "Train/Labels", "Test/Images", "Test/Labels")
    images, masks, splits = [], [], []
    for folder, split in (("Train", "train"), ("Test", "val")):
        for p in sorted((root / folder / "Images").glob("*.png")):
            mat = root / folder / "Labels" / f"{p.stem}.mat"
            if not mat.is_file():
                raise DatasetLayoutError(f"{p}: label file {mat} missing")
            images.append(p), masks.append(mat), splits.append(split)
    if not images:
        raise DatasetLayoutError(f"{root}: no CoNSeP images under Train/Images or Test/Images")
    return SegmentationSet("consep", root, tuple(images), tuple(splits), CONSEP_CLASSES, tuple(masks))


MONUSAC_CLASSES = ("Background", "Epithelial", "Lymphocyte", "Neutrophil", "Macrophage", "Ambiguous")
MONUSAC_DIRS = {"train": "MoNuSAC_images_and_annotations", "test": "MoNuSAC Testing Data and Annotations"}


def _monusac_mask(path: Path, hw: tuple[int, int], classes: tuple[str, ...]) -> np.ndarray:
    """Rasterise the XML polygons: each <Annotation>'s first attribute names the cell type."""
    import cv2

    mask = np.zeros(hw, np.uint8)
    for ann in ET.parse(path).getroot().iter("Annotation"):
        attr = ann.find("Attributes/Attribute")
        if attr is None or attr.get("Name") not in classes:
            continue
        cls = classes.index(attr.get("Name"))
        for region in ann.iter("Region"):
            pts = np.array([[float(v.get("X")), float(v.get("Y"))] for v in region.iter("Vertex")], np.float64)
            if len(pts) >= 3:
                cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], cls)
    return mask.astype(np.int64)


def load_monusac(root: Path) -> SegmentationSet:
    """`MoNuSAC_images_and_annotations/<patient>/*.tif` (+ same-name .xml) and the testing folder."""
    root = Path(root)
    require(root, *MONUSAC_DIRS.values())
    images, masks, splits = [], [], []
    for split, folder in MONUSAC_DIRS.items():
        for p in sorted((root / folder).rglob("*.tif")):
            xml = p.with_suffix(".xml")
            if not xml.is_file():
                raise DatasetLayoutError(f"{p}: annotation {xml.name} missing")
            images.append(p), masks.append(xml), splits.append(split)
    if not images:
        raise DatasetLayoutError(f"{root}: no MoNuSAC .tif images")
    return SegmentationSet("monusac", root, tuple(images), tuple(splits), MONUSAC_CLASSES, tuple(masks))


PCAM_FILES = tuple(f"camelyonpatch_level_2_split_{s}_{k}.h5" for s in ("train", "valid", "test") for k in ("x", "y"))


def load_pcam(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """PatchCamelyon HDF5 files (96 px at ~1 um/px): (uint8 N x 96 x 96 x 3, labels N). Needs h5py."""
    root = Path(root)
    require(root, *PCAM_FILES)
    try:
        import h5py
    except ImportError as exc:
        raise DatasetLayoutError("PCam is stored as HDF5: install h5py to read it") from exc
    name = {"train": "train", "val": "valid", "test": "test"}[split]
    with h5py.File(root / f"camelyonpatch_level_2_split_{name}_x.h5") as fx, h5py.File(root / f"camelyonpatch_level_2_split_{name}_y.h5") as fy:
        return np.asarray(fx["x"]), np.asarray(fy["y"]).reshape(-1)


@dataclass(frozen=True)
class HestTask:
    """One HEST-Benchmark task (e.g. IDC): leave-one-patient-out folds and the benchmark's 50 genes."""

    name: str
    root: Path
    folds: tuple[tuple[Path, Path], ...]  # (train csv, test csv) per fold; rows sample_id, patches_path, expr_path
    genes: tuple[str, ...]


def load_hest_task(root: Path) -> HestTask:
    """`<task>/splits/{train,test}_<k>.csv` + `<task>/var_50genes.json` (HEST-Benchmark `bench_data` layout).

    Patches (.h5) and expression (.h5ad) are read by the caller (needs h5py/anndata); the ridge is in hest.py.
    """
    root = Path(root)
    require(root, "splits", "var_50genes.json")
    trains = sorted((root / "splits").glob("train_*.csv"))
    folds = []
    for tr in trains:
        te = tr.with_name(tr.name.replace("train_", "test_"))
        if not te.is_file():
            raise DatasetLayoutError(f"{tr}: matching {te.name} missing")
        folds.append((tr, te))
    if not folds:
        raise DatasetLayoutError(f"{root / 'splits'}: no train_<k>.csv / test_<k>.csv fold files")
    genes = json.loads((root / "var_50genes.json").read_text())
    genes = genes["genes"] if isinstance(genes, dict) else genes
    return HestTask(root.name, root, tuple(folds), tuple(genes))


ADAPTERS = {"bach": load_bach, "bracs": load_bracs, "breakhis": load_breakhis, "crc": load_crc, "mhist": load_mhist,
            "gleason_arvaniti": load_gleason_arvaniti, "panda": load_panda, "consep": load_consep,
            "monusac": load_monusac, "pcam": load_pcam, "hest": load_hest_task}
