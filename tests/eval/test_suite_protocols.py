"""Suite tasks beyond the linear probe: a HEST copy on generated files, ABMIL on bags derived from the real
slide, segmentation on a generated CoNSeP tree; one suite file runs them all into one table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pluto.eval.labeled import DatasetLayoutError

GENES = ("ERBB2", "ESR1", "KRT5")


def _write_hest(root, rng, n_spots: int = 40, csr: bool = True) -> None:
    """Three patients; expression is a linear function of the patch's mean colour (so embeddings can predict it)."""
    import h5py

    (root / "splits").mkdir(parents=True)
    (root / "patches").mkdir()
    (root / "adata").mkdir()
    (root / "var_50genes.json").write_text(json.dumps({"genes": list(GENES)}))
    for pid in ("P1", "P2", "P3"):
        level = rng.uniform(40, 215, n_spots)
        imgs = np.clip(level[:, None, None, None] + rng.normal(0, 5, (n_spots, 32, 32, 3)), 0, 255).astype(np.uint8)
        codes = [f"{pid}-{i:03d}".encode() for i in range(n_spots)]
        with h5py.File(root / "patches" / f"{pid}.h5", "w") as f:
            f["img"], f["barcode"] = imgs, np.array(codes).reshape(-1, 1)
        counts = np.expm1(np.outer(level / 60, [1.0, 0.5, 0.2])).astype(np.float32)
        var = ["GAPDH", *reversed(GENES)]  # gene order differs from the task's on purpose
        x = np.concatenate([np.ones((n_spots, 1), np.float32), counts[:, ::-1]], axis=1)
        order = rng.permutation(n_spots)  # spots stored in another order than patches
        with h5py.File(root / "adata" / f"{pid}.h5ad", "w") as f:
            if csr:
                g = f.create_group("X")
                g.attrs["encoding-type"], g.attrs["shape"] = "csr_matrix", x.shape
                rows = x[order]
                g["data"], g["indices"] = rows[rows != 0], np.nonzero(rows)[1]
                g["indptr"] = np.concatenate([[0], np.cumsum((rows != 0).sum(1))])
            else:
                f["X"] = x[order]
            for name, index in (("obs", [codes[i] for i in order]), ("var", [v.encode() for v in var])):
                grp = f.create_group(name)
                grp.attrs["_index"] = "_index"
                grp["_index"] = np.array(index)
    for k, test in enumerate(("P1", "P2", "P3")):
        rows = lambda ps: "sample_id,patches_path,expr_path\n" + "".join(f"{p},patches/{p}.h5,adata/{p}.h5ad\n" for p in ps)  # noqa: E731
        (root / "splits" / f"train_{k}.csv").write_text(rows([p for p in ("P1", "P2", "P3") if p != test]))
        (root / "splits" / f"test_{k}.csv").write_text(rows([test]))


@pytest.mark.parametrize("csr", [True, False])
def test_hest_reader_aligns_barcodes_and_genes(tmp_path, csr):
    from pluto.eval.hest_data import load_hest_task, read_sample

    _write_hest(tmp_path / "IDC", np.random.default_rng(0), csr=csr)
    task = load_hest_task(tmp_path / "IDC")
    assert task.genes == GENES and len(task.folds) == 3
    images, counts = read_sample(task, "patches/P2.h5", "adata/P2.h5ad")
    level = images.reshape(len(images), -1).mean(1)
    assert counts.shape == (40, 3) and np.corrcoef(level, np.log1p(counts[:, 0]))[0, 1] > 0.95  # rows match patches
    slopes = [np.polyfit(level, np.log1p(counts[:, j]), 1)[0] * 60 for j in range(3)]
    np.testing.assert_allclose(slopes, [1.0, 0.5, 0.2], atol=0.05)  # columns in the task's gene order
    with pytest.raises(DatasetLayoutError, match="escapes"):
        read_sample(task, "../outside.h5", "adata/P2.h5ad")
    (tmp_path / "IDC" / "var_50genes.json").write_text(json.dumps(["ERBB2", "MKI67"]))
    with pytest.raises(DatasetLayoutError, match=r"gene\(s\) \['MKI67'\]"):
        read_sample(load_hest_task(tmp_path / "IDC"), "patches/P2.h5", "adata/P2.h5ad")


def test_hest_reader_refuses_a_csc_matrix(tmp_path):
    import h5py

    from pluto.eval.hest_data import load_hest_task, read_sample

    _write_hest(tmp_path / "IDC", np.random.default_rng(0), csr=True)
    with h5py.File(tmp_path / "IDC" / "adata" / "P2.h5ad", "r+") as f:
        f["X"].attrs["encoding-type"] = "csc_matrix"  # same arrays read column-major would scramble genes and spots
    with pytest.raises(DatasetLayoutError, match=r"P2.h5ad: X is stored as 'csc_matrix'"):
        read_sample(load_hest_task(tmp_path / "IDC"), "patches/P2.h5", "adata/P2.h5ad")


def _write_consep(root) -> None:
    """A bright disk (epithelial, type 3 -> class 3) on a dark field, in 260-px images eva cuts into 250-px patches."""
    from PIL import Image
    from scipy.io import savemat

    yy, xx = np.mgrid[:260, :260]
    for folder, centres in (("Train", ((90, 100), (170, 150), (120, 180))), ("Test", ((140, 120),))):
        (root / folder / "Images").mkdir(parents=True)
        (root / folder / "Labels").mkdir()
        for i, (cy, cx) in enumerate(centres):
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 < 50**2
            rgb = np.where(disk[..., None], np.array([230, 120, 200]), np.array([90, 30, 110])).astype(np.uint8)
            Image.fromarray(rgb).save(root / folder / "Images" / f"{folder.lower()}_{i}.png")
            savemat(root / folder / "Labels" / f"{folder.lower()}_{i}.mat", {"type_map": np.where(disk, 3, 0)})


def test_one_suite_file_runs_slide_segmentation_and_hest_tasks(fixed_tiny, tmp_path, make_images, cmu_svs):
    from pluto.eval.eval_config import EvalConfig
    from pluto.eval.records import EVAL_SUITE_VERSION
    from pluto.eval.report import results_table
    from pluto.eval.suite import SuiteConfig, load_suite_tasks, run_suite

    _write_hest(tmp_path / "hest" / "IDC", np.random.default_rng(1))
    _write_consep(tmp_path / "consep")
    suite_file = tmp_path / "suite.json"
    suite_file.write_text(json.dumps({"tasks": [
        {"name": "magnification_bags", "dataset": "magnification_bags", "root": str(cmu_svs), "split": "cv", "protocol": "abmil"},
        {"name": "consep", "dataset": "consep", "root": "consep", "split": "val", "protocol": "segmentation"},
        {"name": "hest_idc", "dataset": "hest", "root": "hest/IDC", "split": "cv", "protocol": "hest_ridge"},
    ]}))
    tasks = load_suite_tasks(suite_file)
    assert [t.metric for t in tasks] == ["balanced_accuracy", "dice", "pearson"]
    cfg = EvalConfig(n_seeds=2, cache_dir=str(tmp_path / "cache"), n_folds=3)
    res = run_suite(fixed_tiny, SuiteConfig(tasks, cfg))
    by = {(r.task, r.embedding_mode): r for r in res.records}
    assert set(by) == {("magnification_bags", "cls"), ("magnification_bags", "cls+mean"), ("consep", "patch_tokens"),
                       ("hest_idc", "cls"), ("hest_idc", "cls+mean")}
    mil, seg, hest = by["magnification_bags", "cls"], by["consep", "patch_tokens"], by["hest_idc", "cls"]
    assert mil.protocol == "abmil/quick" and mil.seeds == (0, 1) and mil.extra["n_bags"] == 30
    assert mil.extra["eva_task"] == "panda_small" and seg.extra["eva_task"] == "consep"  # derived bags: the documented default
    assert (seg.extra["n_train"], seg.extra["n_test"]) == (3, 1)  # eva's GridSampler: one 250-px patch per 260-px image
    assert [r.extra["spread_over"] for r in (mil, seg, hest)] == ["folds", "seeds", "patient folds"]
    assert mil.extra["folds"] > 2 and mil.extra["train_folds"] == mil.extra["folds"] - 2  # ABMIL validates on a fold
    assert 0.0 <= min(mil.values) <= max(mil.values) <= 1.0  # random-init encoder: wiring only (learning: test_tasks)
    assert seg.protocol == "segmentation/quick" and seg.mean > 0.7  # the disk's colour survives in random-init tokens
    assert hest.protocol == "hest_ridge" and hest.seeds == (0, 1, 2) and min(hest.values) > 0.8  # expression follows mean colour, which even a random-init encoder keeps
    assert {r.suite_version for r in res.records} == {EVAL_SUITE_VERSION} and {r.patch_size for r in res.records} == {16}
    assert res.score == pytest.approx(np.mean([mil.mean, seg.mean, hest.mean]))  # segmentation counts via its patch tokens
    header, rows = results_table(list(res.records))
    assert {"model cls", "model cls+mean", "model patch_tokens"} <= set(header) and len(rows) == 3


def test_task_config_refuses_a_metric_its_protocol_does_not_report():
    from pluto.eval.task_config import TaskConfig

    with pytest.raises(DatasetLayoutError, match="reports dice"):
        TaskConfig("x", "consep", "/data", protocol="segmentation", metric="balanced_accuracy")
    with pytest.raises(DatasetLayoutError, match="unknown protocol"):
        TaskConfig("x", "consep", "/data", protocol="mil")
    assert TaskConfig.from_dict(TaskConfig("x", "panda", "/d", protocol="abmil").to_dict()).metric == "balanced_accuracy"


def test_cli_evaluate_with_a_suite_file(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pluto.cli import app

    _write_hest(tmp_path / "IDC", np.random.default_rng(2), n_spots=12)
    (tmp_path / "suite.yaml").write_text("tasks:\n  - {name: hest_idc, dataset: hest, root: IDC, split: cv, protocol: hest_ridge}\n")
    monkeypatch.setenv("PLUTO_EVAL__CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PLUTO_EVAL__BASELINES", "false")
    result = CliRunner().invoke(app, ["evaluate", "--model", "pluto_tiny", "--suite", str(tmp_path / "suite.yaml"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("hest_idc "))  # the printed results table
    assert "pearson" in row and "hest_ridge" in row and "(n=3, over patient folds)" in row
    assert (tmp_path / "out" / "results.html").is_file()
    both = CliRunner().invoke(app, ["evaluate", "--model", "pluto_tiny", "--suite", str(tmp_path / "suite.yaml"),
                                    "--images", str(tmp_path), "--out", str(tmp_path / "out")])
    assert both.exit_code != 0 and "either --suite FILE, or both --images DIR and --labels CSV" in str(both.exception or both.output)


def test_eval_modules_import_without_eva_or_h5py():
    """The GPU machine has torch+timm but no kaiko-eva: eva and h5py load only inside the functions that use them."""
    import subprocess
    import sys

    code = ("import sys, pluto.eval.suite, pluto.eval.task_runners, pluto.eval.benchmarks, pluto.eval.hest_data; "
            "print(sorted(m for m in ('eva', 'h5py', 'monai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
