"""Names and paths that would lead out of their root (`..`, absolute, symlinks) are refused at every
entry point that joins a user-supplied name to a root; nothing outside the root is read."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from pluto.data_version import checkout_data
from pluto.errors import PlutoError
from pluto.eval.labeled import DatasetLayoutError, read_labels_csv
from pluto.paths import PathEscapeError, safe_join
from pluto.qc.slide_qc import load_qc, slide_dir
from pluto.slides import ingest
from pluto.slides.s3_source import key_escapes


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    """root/ with a file, a subfolder, and links that stay in or lead out."""
    r = tmp_path / "root"
    (r / "sub").mkdir(parents=True)
    (r / "sub" / "a.txt").write_text("in")
    (tmp_path / "outside.txt").write_text("out")
    os.symlink(r / "sub" / "a.txt", r / "link_in.txt")
    os.symlink(tmp_path / "outside.txt", r / "link_out.txt")
    os.symlink("/etc/passwd", r / "passwd")
    os.symlink(tmp_path, r / "dir_out")
    return r


@pytest.mark.parametrize("rel", ["sub/a.txt", "sub/../sub/a.txt", "link_in.txt", "sub", "."])
def test_safe_join_accepts_what_stays_inside(root: Path, rel: str) -> None:
    assert safe_join(root, rel).is_relative_to(root.resolve())


@pytest.mark.parametrize("rel", ["../outside.txt", "sub/../../outside.txt", "link_out.txt", "passwd", "dir_out/outside.txt", "/etc/passwd"])
def test_safe_join_refuses_what_leads_out(root: Path, rel: str) -> None:
    with pytest.raises(PathEscapeError) as exc:
        safe_join(root, rel)
    assert not exc.value.resolved.is_relative_to(root.resolve())
    assert rel in str(exc.value) and "outside" in str(exc.value)


def test_absolute_path_inside_the_root_is_accepted(root: Path) -> None:
    assert safe_join(root, root / "sub" / "a.txt") == (root / "sub" / "a.txt").resolve()


def test_ingest_never_follows_links_out_of_the_folder(root: Path, tmp_path: Path, cmu_svs: Path, openslide_fixtures: Path) -> None:
    shutil.copy(cmu_svs, root / "sub" / cmu_svs.name)
    outside_slide = tmp_path / "outside_slide.svs"
    shutil.copy(openslide_fixtures / "small.svs", outside_slide)
    os.symlink(outside_slide, root / "escape.svs")
    (tmp_path / "outdir").mkdir()
    shutil.copy(openslide_fixtures / "small.svs", tmp_path / "outdir" / "hidden.svs")
    os.symlink(tmp_path / "outdir", root / "linked_dir")  # a directory link is not walked at all
    cat = ingest(str(root), tmp_path / "work", workers=2).set_index("file_name")
    assert cat.at[cmu_svs.name, "status"] == "ok"
    for name in ("escape.svs", "passwd", "link_out.txt"):
        assert cat.at[name, "reason"] == "bad_path", name
        assert "outside" in cat.at[name, "detail"] and cat.at[name, "path"] == "" and cat.at[name, "bytes"] == 0
    assert "hidden.svs" not in cat.index
    assert cat.at["link_in.txt", "reason"] == "not_a_slide"  # inside: followed, then judged as a file


def test_ingest_side_tables_refuse_path_keys(tmp_path: Path, cmu_svs: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(cmu_svs, src / cmu_svs.name)
    for key in ("../x.svs", "/etc/passwd", "sub/x.svs"):
        table = tmp_path / "mpp.csv"
        table.write_text(f"slide,mpp\n{key},0.5\n")
        with pytest.raises(PlutoError, match=rf"mpp\.csv.*{re.escape(key)}.*file name or slide_id"):
            ingest(str(src), tmp_path / "work", mpp_overrides_csv=table)
        meta = tmp_path / "meta.csv"
        meta.write_text(f"slide,patient\n{key},P1\n")
        with pytest.raises(PlutoError, match=rf"meta\.csv.*{re.escape(key)}.*file name or slide_id"):
            ingest(str(src), tmp_path / "work", metadata_csv=meta)


def test_ingest_quarantines_dangling_links_and_special_files(tmp_path: Path, cmu_svs: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(cmu_svs, src / cmu_svs.name)
    os.symlink(src / "gone.svs", src / "dangling.svs")
    os.mkfifo(src / "pipe.svs")  # reading it would block forever
    cat = ingest(str(src), tmp_path / "work", workers=2).set_index("file_name")
    assert cat.at[cmu_svs.name, "status"] == "ok"
    assert cat.at["dangling.svs", "status"].startswith("quarantined") and cat.at["pipe.svs", "status"].startswith("quarantined")
    assert "regular file" in cat.at["pipe.svs", "detail"]


@pytest.mark.parametrize("filename", ["../outside.png", "/etc/passwd", "link_out.txt", "dir_out/outside.txt"])
def test_labels_csv_rows_cannot_leave_the_images_folder(root: Path, tmp_path: Path, filename: str) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text(f"filename,label\nsub/a.txt,tumor\n{filename},normal\n")
    with pytest.raises(DatasetLayoutError, match=rf"{filename}: path escapes the images folder"):
        read_labels_csv(root, labels)


@pytest.mark.parametrize("slide_id", ["..", "../qc", "a/../../b", "/etc", ""])
def test_qc_outputs_are_addressed_by_plain_slide_ids_only(tmp_path: Path, slide_id: str) -> None:
    with pytest.raises(PlutoError, match="not a valid slide_id"):
        slide_dir(tmp_path, slide_id)
    with pytest.raises(PlutoError, match="not a valid slide_id"):
        load_qc(tmp_path, slide_id)


@pytest.mark.parametrize("key", ["../x.svs", "a/../../x.svs", "/abs.svs"])
def test_s3_keys_leaving_the_prefix_are_flagged(key: str) -> None:
    assert key_escapes(key)
    assert not key_escapes("cohort/a..b.svs")


@pytest.mark.parametrize(("md5", "path"), [("../../etc/passwd", "data"), ("0" * 31 + ".dir", "data"), ("g" * 32 + ".dir", "data"),
                                           ("d41d8cd98f00b204e9800998ecf8427e/../x", "data"),
                                           ("d41d8cd98f00b204e9800998ecf8427e.dir", "../elsewhere")])
def test_data_checkout_refuses_a_dvc_file_that_is_not_a_data_version(tmp_path: Path, md5: str, path: str) -> None:
    work, dvc_file = tmp_path / "work", tmp_path / "data.dvc"
    dvc_file.write_text(f"outs:\n- md5: {md5}\n  hash: md5\n  path: {path}\n")
    with pytest.raises(PlutoError, match=f"{dvc_file}: not a DVC data version"):
        checkout_data(work, dvc_file, "s3://bucket/dvc")
    assert not work.exists()  # refused before anything was written


@pytest.mark.slow  # imports kaiko-eva's dataset stack (tens of seconds on a shared core)
def test_benchmark_annotations_cannot_name_files_outside_the_copy(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from pluto.eval.benchmarks import load_mhist

    root = tmp_path / "mhist"
    (root / "images").mkdir(parents=True)
    for name in ("MHIST_a.png", "MHIST_b.png", "../../outside.png"):
        Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(root / "images" / name)
    (root / "annotations.csv").write_text(
        "Image Name,Majority Vote Label,Number of Annotators who Selected SSA (Out of 7),Partition\n"
        "MHIST_a.png,SSA,6,train\nMHIST_b.png,HP,1,train\n../../outside.png,HP,0,test\n"
    )
    assert (tmp_path / "outside.png").is_file()
    with pytest.raises(DatasetLayoutError, match=r"\.\./\.\./outside\.png: path escapes the images folder"):
        load_mhist(root)
