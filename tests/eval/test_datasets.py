"""Benchmark adapters on small generated trees with each benchmark's layout; the generic folder adapter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pluto.eval import benchmarks as B
from pluto.eval.labeled import DatasetLayoutError, read_labels_csv


def test_bach_eva_patient_split_and_incomplete_copy(tmp_path, make_images):
    base = "ICIAR2018_BACH_Challenge/Photos"
    make_images(tmp_path, [f"{base}/{c}/{c.lower()}{i:03d}.tif" for c in B.BACH_CLASSES for i in range(100)], size_px=4)
    ds = B.load_bach(tmp_path)  # eva's BACH: index ranges over the 400 sorted photos
    assert ds.splits.count("train") == 268 and ds.splits.count("val") == 132 and ds.classes == B.BACH_CLASSES
    assert ds.labels[0] == "Benign" and ds.labels[-1] == "Normal" and all(p.is_file() for p in ds.paths)
    (tmp_path / base / "Normal" / "normal000.tif").unlink()
    with pytest.raises(DatasetLayoutError, match="needs all 400 .tif photos.*found 399"):
        B.load_bach(tmp_path)
    for p in (tmp_path / base / "Normal").iterdir():
        p.unlink()
    (tmp_path / base / "Normal").rmdir()
    with pytest.raises(DatasetLayoutError, match="'ICIAR2018_BACH_Challenge/Photos/Normal'"):
        B.load_bach(tmp_path)


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
    assert set(ds.groups) == {"101", "102"} and set(ds.splits) == {"train"}  # not eva's validation patients


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
    train = [f"train_validation_patches_750/ZT{t}_1_A_1_1/ZT{t}_1_A_1_1_patch_{k}_class_{k}.jpg" for t, k in
             (("111", 0), ("199", 1), ("204", 2), ("111", 3))]
    make_images(tmp_path, train + ["train_validation_patches_750/ZT76_39_A_1_1/ZT76_39_A_1_1_patch_2_class_3.jpg",
                                   "test_patches_750/patho_1/ZT80_38_A_1_1/ZT80_38_A_1_1_patch_4_class_2.jpg"])
    ds = B.load_gleason_arvaniti(tmp_path)
    assert ds.splits.count("train") == 4 and list(zip(ds.labels, ds.splits))[4:] == [("gleason_5", "val"), ("gleason_4", "test")]


def test_panda_slides_and_grades(tmp_path):
    (tmp_path / "train_images").mkdir()
    for i in range(3):
        (tmp_path / "train_images" / f"s{i}.tiff").write_bytes(b"II*\x00")
    (tmp_path / "train.csv").write_text("image_id,data_provider,isup_grade,gleason_score\ns0,radboud,0,0+0\ns1,karolinska,3,4+3\ns2,radboud,5,5+5\n")
    ds = B.load_panda(tmp_path)
    assert ds.labels == ("0", "3", "5") and set(ds.splits) <= {"train", "val", "test"} and len(ds.splits) == 3
    (tmp_path / "train_images" / "s9.tiff").write_bytes(b"")
    with pytest.raises(DatasetLayoutError, match="s9.tiff"):
        B.load_panda(tmp_path)


def test_consep_eva_patches_and_merged_classes(tmp_path, make_images):
    from scipy.io import savemat

    for folder in ("Train", "Test"):
        make_images(tmp_path, [f"{folder}/Images/{folder.lower()}_1.png"], size_px=260, colors={"": (150, 60, 160)})
        (tmp_path / folder / "Labels").mkdir()
        savemat(tmp_path / folder / "Labels" / f"{folder.lower()}_1.mat", {"type_map": np.arange(260 * 260).reshape(260, 260) % 8})
    ds = B.load_consep(tmp_path)  # eva samples 250-px patches at 0.25 um/px
    rgb, mask = ds.read(0)
    assert rgb.shape == (250, 250, 3) and rgb.dtype == np.uint8 and mask.shape == (250, 250)
    assert ds.splits[0] == "train" and ds.splits[-1] == "val" and ds.classes == B.CONSEP_CLASSES
    assert set(np.unique(mask)) == {0, 1, 2, 3, 4}  # 3&4 -> 3; 5,6,7 -> 4
    (tmp_path / "Test/Labels/test_1.mat").unlink()
    with pytest.raises(DatasetLayoutError, match="Test/Labels/test_1.mat missing"):
        B.load_consep(tmp_path)


def _monusac_xml(cell: str, square: tuple[int, int]) -> str:
    a, b = square
    verts = "".join(f"<Vertex X='{x}' Y='{y}'/>" for x, y in ((a, a), (b, a), (b, b), (a, b)))
    return (f"<Annotations><Annotation><Attributes><Attribute Name='{cell}' Id='1'/></Attributes><Regions>"
            f"<RegionAttributeHeaders/><Region Id='1'><Attributes/><Vertices>{verts}</Vertices></Region></Regions>"
            "</Annotation></Annotations>")


def test_monusac_xml_polygons_rasterised_by_eva(tmp_path, make_images):
    for split, cell in (("train", "Lymphocyte"), ("test", "Macrophage")):
        d = tmp_path / B.MONUSAC_DIRS[split] / "TCGA-X"
        make_images(d, [f"img_{split}.tif"], size_px=20)
        (d / f"img_{split}.xml").write_text(_monusac_xml(cell, (2, 9)))
    ds = B.load_monusac(tmp_path)
    _, mask = ds.read(0)
    assert ds.splits == ("train", "test") and ds.classes == B.MONUSAC_CLASSES
    assert mask[5, 5] == B.MONUSAC_CLASSES.index("Lymphocyte") and mask[15, 15] == 0 and mask[:2].sum() == 0
    assert ds.read(1)[1][5, 5] == B.MONUSAC_CLASSES.index("Macrophage")
    (tmp_path / B.MONUSAC_DIRS["test"] / "TCGA-X" / "img_test.xml").unlink()
    with pytest.raises(DatasetLayoutError, match="annotation img_test.xml missing"):
        B.load_monusac(tmp_path)


def test_pcam_h5_files_read_through_eva(tmp_path):
    import h5py

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("valid", 2), ("test", 3)):
        with h5py.File(tmp_path / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as f:
            f["x"] = rng.integers(0, 255, (n, 96, 96, 3), dtype=np.uint8)
        with h5py.File(tmp_path / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
            f["y"] = (np.arange(n) % 2).astype(np.uint8).reshape(n, 1, 1, 1)
    ds = B.load_pcam(tmp_path)
    assert ds.splits == ("train",) * 6 + ("val",) * 2 + ("test",) * 3 and ds.classes == ("no_tumor", "tumor")
    assert ds.label_ids.tolist() == [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0]
    images = ds.dataset(input_px=48)
    with h5py.File(tmp_path / "camelyonpatch_level_2_split_valid_x.h5") as f:
        second_val = f["x"][1]
    assert len(images) == 11 and images[7].shape == (3, 48, 48) and images[7].dtype == torch.uint8
    assert torch.equal(B.EvaImages(list(ds.parts), 96, ds.files)[7], torch.from_numpy(second_val).permute(2, 0, 1))
    assert images.fingerprint == ds.dataset(48).fingerprint != ds.dataset(64).fingerprint


def test_generic_folder_adapter_checks_classes_splits_and_paths(tmp_path, make_images):
    make_images(tmp_path, ["a/1.png", "a/2.png", "b/3.png", "b/4.png"])
    csv = tmp_path / "labels.csv"
    csv.write_text("filename,label,split\na/1.png,tumor,train\na/2.png,tumor,test\nb/3.png,normal,test\n")
    with pytest.raises(DatasetLayoutError, match=r"no train item: test has \['normal'\]"):
        read_labels_csv(tmp_path, csv)
    csv.write_text("filename,label,split\na/1.png,tumor,train\na/2.png,tumor,test\nb/3.png,normal,test\nb/4.png,normal,train\n")
    ds = read_labels_csv(tmp_path, csv)
    assert ds.classes == ("normal", "tumor") and ds.splits == ("train", "test", "test", "train")
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
