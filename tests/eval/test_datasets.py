"""Benchmark adapters on small generated trees with each benchmark's layout; the generic folder adapter."""

from __future__ import annotations

import numpy as np
import pytest

from pluto.eval import benchmarks as B
from pluto.eval.labeled import DatasetLayoutError, read_labels_csv


def test_bach_layout_and_missing_class(tmp_path, make_images):
    base = "ICIAR2018_BACH_Challenge/Photos"
    make_images(tmp_path, [f"{base}/{c}/{c.lower()}{i:03d}.tif" for c in B.BACH_CLASSES for i in range(2)])
    ds = B.load_bach(tmp_path)
    assert len(ds.paths) == 8 and ds.classes == B.BACH_CLASSES and ds.splits is None  # not the full 400: no eva split
    assert ds.label_ids.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for p in (tmp_path / base / "Normal").iterdir():
        p.unlink()
    with pytest.raises(DatasetLayoutError, match=r"no items for class\(es\) \['Normal'\]"):
        B.load_bach(tmp_path)


def test_missing_dataset_names_what_is_missing(tmp_path):
    with pytest.raises(DatasetLayoutError, match="dataset folder not found"):
        B.load_crc(tmp_path / "nowhere")
    (tmp_path / "NCT-CRC-HE-100K").mkdir()
    with pytest.raises(DatasetLayoutError, match="'CRC-VAL-HE-7K'"):
        B.load_crc(tmp_path)
    with pytest.raises(DatasetLayoutError, match="camelyonpatch_level_2_split_train_x.h5"):
        B.load_pcam(tmp_path, "test")
    with pytest.raises(DatasetLayoutError, match="'splits', 'var_50genes.json'"):
        B.load_hest_task(tmp_path)


def test_crc_train_and_val_folders(tmp_path, make_images):
    names = [f"{d}/{c}/{c}-{i}.tif" for d in ("NCT-CRC-HE-100K", "CRC-VAL-HE-7K") for c in B.CRC_CLASSES for i in range(2)]
    make_images(tmp_path, names)
    ds = B.load_crc(tmp_path)
    assert len(ds.paths) == 36 and ds.splits.count("train") == 18 and ds.splits.count("val") == 18


def test_bracs_splits(tmp_path, make_images):
    make_images(tmp_path, [f"BRACS_RoI/latest_version/{s}/{c}/x_{c}_{i}.png" for s in ("train", "val", "test") for c in B.BRACS_CLASSES for i in range(1)])
    ds = B.load_bracs(tmp_path)
    assert set(ds.splits) == {"train", "val", "test"} and len(ds.paths) == 21


def test_breakhis_keeps_40x_and_eva_classes_with_patient_groups(tmp_path, make_images):
    names = []
    for kind, sub in (("benign", "TA"), ("benign", "F"), ("malignant", "DC"), ("malignant", "MC"), ("malignant", "LC")):
        for mag in ("40X", "100X"):
            names.append(f"BreaKHis_v1/histology_slides/breast/{kind}/SOB/{sub}/SOB_{kind[0].upper()}_{sub}-14-{100 + len(sub)}/{mag}/"
                         f"SOB_{kind[0].upper()}_{sub}-14-{100 + len(sub)}-{mag[:-1]}-001.png")
    make_images(tmp_path, names)
    ds = B.load_breakhis(tmp_path)
    assert sorted(ds.labels) == ["DC", "F", "MC", "TA"]  # LC dropped, 100X dropped
    assert set(ds.groups) == {"101", "102"}


def test_mhist_annotations(tmp_path, make_images):
    make_images(tmp_path, ["images/MHIST_a.png", "images/MHIST_b.png", "images/MHIST_c.png"])
    (tmp_path / "annotations.csv").write_text("Image Name,Majority Vote Label,Number of Annotators who Selected SSA (Out of 7),Partition\n"
                                              "MHIST_a.png,SSA,6,train\nMHIST_b.png,HP,1,train\nMHIST_c.png,HP,0,test\n")
    ds = B.load_mhist(tmp_path)
    assert ds.labels == ("SSA", "HP", "HP") and ds.splits == ("train", "train", "test")
    (tmp_path / "images/MHIST_c.png").unlink()
    with pytest.raises(DatasetLayoutError, match="MHIST_c.png"):
        B.load_mhist(tmp_path)


def test_gleason_arvaniti_eva_split_by_microarray(tmp_path, make_images):
    make_images(tmp_path, ["train_validation_patches_750/ZT111_4_A_1_1/ZT111_4_A_1_1_patch_1_class_0.jpg",
                           "train_validation_patches_750/ZT76_39_A_1_1/ZT76_39_A_1_1_patch_2_class_3.jpg",
                           "train_validation_patches_750/ZT199_1_A_1_1/ZT199_1_A_1_1_patch_3_class_1.jpg",
                           "test_patches_750/patho_1/ZT80_38_A_1_1/ZT80_38_A_1_1_patch_4_class_2.jpg"])
    ds = B.load_gleason_arvaniti(tmp_path)
    assert dict(zip(ds.labels, ds.splits)) == {"benign": "train", "gleason_5": "val", "gleason_3": "train", "gleason_4": "test"}


def test_panda_slides_and_grades(tmp_path):
    (tmp_path / "train_images").mkdir()
    for i in range(3):
        (tmp_path / "train_images" / f"s{i}.tiff").write_bytes(b"II*\x00")
    (tmp_path / "train.csv").write_text("image_id,data_provider,isup_grade,gleason_score\ns0,radboud,0,0+0\ns1,karolinska,3,4+3\ns2,radboud,5,5+5\n")
    ds = B.load_panda(tmp_path)
    assert ds.labels == ("0", "3", "5")
    (tmp_path / "train_images" / "s9.tiff").write_bytes(b"")
    with pytest.raises(DatasetLayoutError, match="s9.tiff"):
        B.load_panda(tmp_path)


def test_consep_masks_merge_classes_as_eva(tmp_path, make_images):
    from scipy.io import savemat

    for folder in ("Train", "Test"):
        make_images(tmp_path, [f"{folder}/Images/{folder.lower()}_1.png"], size_px=8)
        (tmp_path / folder / "Labels").mkdir()
        savemat(tmp_path / folder / "Labels" / f"{folder.lower()}_1.mat", {"type_map": np.arange(64).reshape(8, 8) % 8})
    ds = B.load_consep(tmp_path)
    rgb, mask = ds.read(0)
    assert rgb.shape == (8, 8, 3) and ds.splits == ("train", "val")
    assert set(np.unique(mask)) == {0, 1, 2, 3, 4}  # 3&4 -> 3; 5,6,7 -> 4


def test_monusac_xml_polygons_rasterised(tmp_path, make_images):
    d = tmp_path / B.MONUSAC_DIRS["train"] / "TCGA-X"
    make_images(d, ["img_1.tif"], size_px=20)
    (d / "img_1.xml").write_text(
        "<Annotations><Annotation><Attributes><Attribute Name='Lymphocyte'/></Attributes><Regions><Region><Vertices>"
        "<Vertex X='2' Y='2'/><Vertex X='9' Y='2'/><Vertex X='9' Y='9'/><Vertex X='2' Y='9'/></Vertices></Region></Regions>"
        "</Annotation></Annotations>")
    (tmp_path / B.MONUSAC_DIRS["test"]).mkdir()
    ds = B.load_monusac(tmp_path)
    _, mask = ds.read(0)
    assert mask[5, 5] == B.MONUSAC_CLASSES.index("Lymphocyte") and mask[15, 15] == 0 and (mask > 0).sum() == 64


def test_hest_task_folds_and_genes(tmp_path):
    (tmp_path / "IDC" / "splits").mkdir(parents=True)
    for k in range(2):
        for part in ("train", "test"):
            (tmp_path / "IDC" / "splits" / f"{part}_{k}.csv").write_text("sample_id,patches_path,expr_path\n")
    (tmp_path / "IDC" / "var_50genes.json").write_text('{"genes": ["ERBB2", "ESR1"]}')
    task = B.load_hest_task(tmp_path / "IDC")
    assert task.name == "IDC" and len(task.folds) == 2 and task.genes == ("ERBB2", "ESR1")


def test_generic_folder_adapter_checks_classes_splits_and_paths(tmp_path, make_images):
    make_images(tmp_path, ["a/1.png", "a/2.png", "b/3.png"])
    csv = tmp_path / "labels.csv"
    csv.write_text("filename,label,split\na/1.png,tumor,train\na/2.png,tumor,test\nb/3.png,normal,test\n")
    ds = read_labels_csv(tmp_path, csv)
    assert ds.classes == ("normal", "tumor") and ds.splits == ("train", "test", "test")
    with pytest.raises(DatasetLayoutError, match=r"unexpected class\(es\) \['normal'\].*no items for class\(es\) \['stroma'\]"):
        read_labels_csv(tmp_path, csv, classes=("tumor", "stroma"))
    csv.write_text("filename,label\n../outside.png,tumor\n")
    with pytest.raises(DatasetLayoutError, match="escapes the images folder"):
        read_labels_csv(tmp_path, csv)
    csv.write_text("filename,label,split\na/1.png,tumor,train\na/2.png,tumor,\n")
    with pytest.raises(DatasetLayoutError, match="some rows but not all"):
        read_labels_csv(tmp_path, csv)
    with pytest.raises(DatasetLayoutError, match="labels file not found"):
        read_labels_csv(tmp_path, tmp_path / "none.csv")


def test_real_crc_patches_through_the_folder_adapter(crc_labeled):
    assert len(crc_labeled.paths) == 32 and crc_labeled.splits is None
    assert np.bincount(crc_labeled.label_ids).tolist() == [4] * 8
    assert crc_labeled.to_dict() == type(crc_labeled).from_dict(crc_labeled.to_dict()).to_dict()
