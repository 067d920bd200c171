"""Benchmark adapters on small generated trees with each benchmark's layout; the generic folder adapter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pluto.eval import benchmarks as B
from pluto.eval.labeled import DatasetLayoutError, read_labels_csv
from pluto.eval.task_config import TaskConfig


def test_bach_eva_patient_split_and_incomplete_copy(tmp_path, make_images):
    base = "ICIAR2018_BACH_Challenge/Photos"
    make_images(tmp_path, [f"{base}/{c}/{c.lower()}{i:03d}.tif" for c in B.BACH_CLASSES for i in range(100)], size_px=4)
    ds = B.load_bach(tmp_path)  # eva's BACH: index ranges over the 400 sorted photos
    assert ds.splits.count("train") == 268 and ds.splits.count("val") == 132 and ds.classes == B.BACH_CLASSES
    assert ds.labels[0] == "Benign" and ds.labels[-1] == "Normal" and all(p.is_file() for p in ds.paths)
    assert ds.incomplete is None  # eva's validate(): 268 / 132, four classes
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
    assert ds.incomplete == "18 of 100,000 images (train); 18 of 7,180 images (val)"  # eva's validate() counts


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
    assert TaskConfig("g", "gleason_arvaniti", str(tmp_path)).split == "val"  # eva's gleason_arvaniti.yaml reports val
    assert TaskConfig("g", "gleason_arvaniti", str(tmp_path), split="test").split == "test"
    assert TaskConfig("f", "folder", str(tmp_path)).split == "test"


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


@pytest.mark.parametrize("message, reason", [
    ("Dataset's 'CRC' length (36) does not match the expected one (100000). Please verify ...", "36 of 100,000 images (train)"),
    ("Expected 216 files, for split 'train' found 3. Please verify ...", "3 of 216 images (train)"),
    ("Expected 27 images, found 1 in /data.", "1 of 27 images (train)"),
    ("Dataset's 'X' number of classes (3) does not match the expected one (4).Please", "Dataset's 'X' number of classes (3) "
     "does not match the expected one (4).Please (train)"),
])
def test_eva_integrity_messages_become_short_reasons(message, reason):
    assert B._shortfall(message, "train", "images") == reason


def test_eva_reported_split_is_the_configs_test_else_val():
    """eva reports the split of a config's `test` dataset, else of its `val` one (its leaderboard's rule)."""
    from test_eva_protocol import load_eva_config

    from pluto.eval.eva_protocol import EVA_TASKS

    for name, split in B.EVA_REPORTED_SPLIT.items():
        datasets = load_eva_config(EVA_TASKS[name].config)["data"]["init_args"]["datasets"]
        assert (datasets.get("test") or datasets["val"])["init_args"]["split"] == split, name
    assert set(B.EVA_REPORTED_SPLIT) == set(EVA_TASKS)


@pytest.fixture(scope="module")
def tissue_slide(tmp_path_factory):
    """A 700 x 600 px two-level pyramid, tissue-coloured (saturated) except a white margin: eva's sampler
    finds 6 foreground 224-px cells at level 0. Written once per mpp; slides of a tree are links to it."""
    from pluto.slides import write_pyramid

    rgb = np.full((600, 700, 3), 240, np.uint8)
    rgb[50:500, 50:600] = (170, 60, 160)
    d = tmp_path_factory.mktemp("slides")
    return {mpp: write_pyramid(d / f"tissue_{mpp}.tif", rgb, mpp=mpp, n_levels=2) for mpp in (0.25, 0.5)}


def _link(root, rel: str, target) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).symlink_to(target)


def _panda_tree(root, slide, n: int, table: str = B.PANDA_TABLE) -> list[str]:
    """n slides, grades 0 and 3 alternating; eva's table marks every 10th slide noisy (noise_ratio_10 == 0, dropped)."""
    ids = [f"{i:032x}" for i in range(n)]
    for i in ids:
        _link(root, f"train_images/{i}.tiff", slide)
    noise = ",noise_ratio_10" if table == B.PANDA_TABLE else ""
    rows = [f"{i},radboud,{3 * (k % 2)},0+0" + (f",{0 if k % 10 == 9 else 0.1}" if noise else "") for k, i in enumerate(ids)]
    (root / table).write_text(f"image_id,data_provider,isup_grade,gleason_score{noise}\n" + "\n".join(rows) + "\n")
    return ids


def test_panda_small_is_evas_split_with_evas_tiles_and_counts(tmp_path, tissue_slide, monkeypatch):
    ids = _panda_tree(tmp_path, tissue_slide[0.5], 40)
    monkeypatch.setattr(B, "PANDA_N_SLIDES", 40)  # the full table's row count, scaled to the generated tree
    small, full = B.load_panda_small(tmp_path), B.load_panda(tmp_path)
    assert small.incomplete is None and full.incomplete is None
    # 4 noisy (grade 3) dropped: 20 of grade 0, 16 of grade 3; PANDASmall keeps floor(10/5/5 %), at least 1, per class
    assert len(full.paths) == 36 and len(small.paths) == 7
    assert sorted(small.splits) == ["test"] * 2 + ["train"] * 3 + ["val"] * 2 and set(small.labels) == {"0", "3"}
    assert all(len(t) == 6 and set(t.columns) == {"path", "x_l0", "y_l0", "mpp", "tile_px"} for t in small.tiles)
    assert small.tiles[0].mpp.iloc[0] == 0.5 and small.tiles[0].tile_px.iloc[0] == 224

    # eva's own PANDASmall (its label-table download stubbed) lists the same slides per split
    from eva.vision.data.datasets import PANDASmall
    from eva.vision.data.wsi.patching import samplers

    monkeypatch.setattr(PANDASmall, "_download_resources", lambda self: None)
    for split in ("train", "val", "test"):
        eva = PANDASmall(str(tmp_path), samplers.ForegroundGridSampler(max_samples=200), split, download_dir=str(tmp_path))
        ours = [p.name for p, s in zip(small.paths, small.splits) if s == split]
        assert sorted(ours) == sorted(Path(f).name for f in eva._file_paths), split

    (tmp_path / "train_images" / f"{ids[0]}.tiff").unlink()
    assert B.load_panda_small(tmp_path).incomplete == "39 of 40 slides"
    monkeypatch.setattr(B, "PANDA_N_SLIDES", 10_616)
    assert B.load_panda(tmp_path).incomplete == f"{B.PANDA_TABLE} has 40 of 10,616 rows; 39 of 40 slides"


def test_panda_with_kaggle_table_and_layout_errors(tmp_path, tissue_slide, monkeypatch):
    monkeypatch.setattr(B, "PANDA_N_SLIDES", 12)
    _panda_tree(tmp_path, tissue_slide[0.5], 12, table="train.csv")
    ds = B.load_panda(tmp_path)
    assert len(ds.paths) == 12 and set(ds.labels) == {"0", "3"} and "no noise_ratio_10" in ds.incomplete
    _link(tmp_path, "train_images/s9.tiff", tissue_slide[0.5])
    with pytest.raises(DatasetLayoutError, match="s9.tiff"):
        B.load_panda(tmp_path)
    (tmp_path / "train_images" / "s9.tiff").unlink()
    (tmp_path / "train.csv").unlink()
    with pytest.raises(DatasetLayoutError, match="train_with_noisy_labels.csv"):
        B.load_panda_small(tmp_path)


def _camelyon16_tree(root, slide, normal: int, tumor: int, test: int) -> None:
    for d in B.CAMELYON16_DIRS:
        (root / d).mkdir(parents=True, exist_ok=True)
    for kind, n in (("normal", normal), ("tumor", tumor)):
        for i in range(1, n + 1):
            _link(root, f"training/{kind}/{kind}_{i:03d}.tif", slide)
    for i in range(1, test + 1):
        _link(root, f"testing/images/test_{i:03d}.tif", slide)
    (root / "testing/reference.csv").write_text("".join(f"test_{i:03d},{'Tumor,Macro' if i % 2 else 'Normal'}\n"
                                                        for i in range(1, test + 1)))


def test_camelyon16_small_eva_split_labels_and_the_tiles_eva_samples(tmp_path, tissue_slide):
    _camelyon16_tree(tmp_path, tissue_slide[0.25], normal=11, tumor=2, test=3)
    ds = B.load_camelyon16_small(tmp_path)
    assert ds.name == "camelyon16_small" and ds.classes == ("normal", "tumor")
    by_name = {p.stem: (label, split) for p, label, split in zip(ds.paths, ds.labels, ds.splits)}
    assert by_name["normal_010"] == ("normal", "val") and by_name["tumor_001"] == ("tumor", "val")  # eva's val list
    assert by_name["normal_001"] == ("normal", "train") and by_name["tumor_002"] == ("tumor", "train")
    assert by_name["test_001"] == ("tumor", "test") and by_name["test_002"] == ("normal", "test")
    assert ds.incomplete == "11 of 216 slides (train); 2 of 54 slides (val); 3 of 129 slides (test)"

    # the tiles are eva's: its Camelyon16 configured with camelyon16_small.yaml's sampler reads the same coordinates
    from eva.vision.data.datasets import Camelyon16
    from eva.vision.data.wsi.patching import samplers

    eva = Camelyon16(str(tmp_path), samplers.ForegroundGridSampler(max_samples=1000), "test", 224, 224, 0.25)
    eva.configure()
    eva_xy = sorted((m["x"], m["y"]) for m in (eva.load_metadata(i) for i in range(len(eva))) if m["wsi_id"] == "test_001")
    ours = ds.tiles[ds.paths.index(tmp_path / "testing/images/test_001.tif")]
    assert sorted(zip(ours.x_l0, ours.y_l0)) == eva_xy and len(eva_xy) == 6 and set(ours.mpp) == {0.25}


def test_camelyon16_complete_copy_and_layout_errors(tmp_path, tissue_slide):
    _camelyon16_tree(tmp_path, tissue_slide[0.25], normal=160, tumor=110, test=129)  # eva's 216 / 54 / 129
    assert B.load_camelyon16_small(tmp_path).incomplete is None
    (tmp_path / "testing/reference.csv").write_text("test_001,Tumor\n")
    with pytest.raises(DatasetLayoutError, match="reference.csv: no label for test slide 'test_002'"):
        B.load_camelyon16_small(tmp_path)
    (tmp_path / "testing/reference.csv").unlink()
    with pytest.raises(DatasetLayoutError, match="'testing/reference.csv'"):
        B.load_camelyon16_small(tmp_path)


def test_slide_without_mpp_is_a_layout_error_naming_it(tmp_path):
    from pluto.slides import write_pyramid

    slide = write_pyramid(tmp_path / "src.tif", np.full((300, 300, 3), 120, np.uint8), mpp=None, n_levels=1)
    _camelyon16_tree(tmp_path / "c16", slide, normal=1, tumor=0, test=1)
    with pytest.raises(DatasetLayoutError, match="normal_001.tif: eva cannot sample 224-px tiles"):
        B.load_camelyon16_small(tmp_path / "c16")
    (tmp_path / "c16/testing/reference.csv").write_text("")
    with pytest.raises(DatasetLayoutError, match="testing/reference.csv: No columns"):
        B.load_camelyon16_small(tmp_path / "c16")


def test_records_of_an_incomplete_copy_say_so(tmp_path, tissue_slide, make_images, fixed_tiny):
    """The adapter's reason reaches EvalRecord.extra["incomplete"] (linear probe and ABMIL, one bag per slide);
    an unset split is eva's reported one (CRC val, Camelyon16 test)."""
    from pluto.eval import task_runners
    from pluto.eval.eval_config import EvalConfig
    from pluto.eval.suite import evaluate_task

    cfg = EvalConfig(preset="quick", modes=("cls",), cache_dir=None, n_seeds=1, baselines=False)
    make_images(tmp_path / "crc", [f"{d}/{c}/{c}-{i}.tif" for d in ("NCT-CRC-HE-100K", "CRC-VAL-HE-7K") for c in B.CRC_CLASSES
                                   for i in range(2)])
    (probe,), _ = evaluate_task(fixed_tiny, TaskConfig("crc", "crc", str(tmp_path / "crc")), cfg)
    assert probe.split == "val" and probe.extra["incomplete"] == "18 of 100,000 images (train); 18 of 7,180 images (val)"
    _camelyon16_tree(tmp_path / "c16", tissue_slide[0.25], normal=11, tumor=2, test=3)
    (mil,) = task_runners.run_abmil(fixed_tiny, TaskConfig("c16", "camelyon16_small", str(tmp_path / "c16"), protocol="abmil"), cfg)
    assert mil.split == "test" and mil.extra["n_bags"] == 16
    assert mil.extra["incomplete"] == "11 of 216 slides (train); 2 of 54 slides (val); 3 of 129 slides (test)"
