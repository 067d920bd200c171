"""bench/bench_learning.py at a tiny size: the JSON schema, comparisons paired over the same folds, the
PNG and the README section. Nothing here asserts that training beats random init (3 steps learn nothing)."""

from __future__ import annotations

import math

import numpy as np

ENCODERS = {"trained", "random_init", "random_init_draw", "mean_rgb", "parent"}
METRICS = {"linear_probe_balanced_accuracy", "knn_accuracy"}


def test_tiny_run_writes_paired_comparisons_curve_and_readme_section(tmp_path):
    from bench.bench_learning import main, readme_body
    from bench.common import write_section

    out = tmp_path / "learning.json"
    result = main(["--steps", "2", "--checkpoints", "2", "--batch", "4", "--repeats", "3", "--folds", "3", "--workers", "0",
                   "--tasks", "crc_tissue", "magnification", "qc_labels", "--out", str(out), "--no-readme", "--twin-draws", "3",
                   "--set", "ssl.teacher_temp=0.05", "--set", "ssl.centering=softmax"])
    assert out.is_file() and out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["mode"] == "result" and result["config"]["checkpoint_steps"] == [0, 1, 2]
    tiles = result["config"]["pretraining_tiles"]
    assert tiles["regions_monuseg"] > 0 and tiles["CMU-1-Small-Region.svs"] > 0
    assert result["train"]["steps"] == 2 and result["machine"]["git_sha"]
    assert {"global_batch", "batch_per_gpu"} <= set(result["config"]["recipe_overrides"])  # --batch 4 over the recipe's 8
    assert result["config"]["ssl"]["teacher_temp"] == 0.05 and result["config"]["ssl"]["centering"] == "softmax"  # --set
    assert result["config"]["set"] == ["ssl.teacher_temp=0.05", "ssl.centering=softmax"]

    rows = result["rows"]
    assert {r["encoder"] for r in rows} == {"trained", "random_init", "random_init_draw", "mean_rgb"}
    for r in rows:
        assert {"encoder", "task", "metric", "mean", "std", "n", "steps"} <= set(r) and r["encoder"] in ENCODERS
        assert r["metric"] in METRICS and r["n"] == 3 and 0.0 <= r["mean"] <= 1.0
        assert np.asarray(r["fold_values"]).shape == (3, 3)
    for task in ("crc_tissue", "magnification", "qc_labels"):
        task_rows = [r for r in rows if r["task"] == task]
        assert len({r["folds_sha"] for r in task_rows}) == 1  # every encoder scored on the same folds
        assert {(r["encoder"], r["steps"], r.get("init_seed")) for r in task_rows} == {
            ("trained", 0, None), ("trained", 1, None), ("trained", 2, None), ("random_init", 0, None), ("mean_rgb", None, None),
            ("random_init_draw", None, 1), ("random_init_draw", None, 2)}
    draws = {(d["task"], d["metric"]): d for d in result["random_init_draws"]}
    assert len(draws) == 3 * 2 and all(d["init_seeds"] == [0, 1, 2] for d in draws.values())
    for (task, metric), d in draws.items():  # the twin is draw 0; the draws are other weights, scored on the same folds
        same = [r for r in rows if (r["task"], r["metric"]) == (task, metric) and r["encoder"].startswith("random_init")]
        assert d["means"] == [r["mean"] for r in sorted(same, key=lambda r: r.get("init_seed", 0))]
        assert len({r["weights"] for r in same}) == 3 and math.isclose(d["mean"], np.mean(d["means"]), abs_tol=1e-4)

    by = {(r["encoder"], r["steps"], r["task"], r["metric"]): r for r in rows}
    comps = result["comparisons"]
    assert len(comps) == 3 * 2 * 3  # tasks x metrics x trained checkpoints
    for c in comps:
        assert {"task", "a", "b", "diff_mean", "diff_se", "n"} <= set(c) and (c["a"], c["b"]) == ("trained", "random_init")
        a, b = by[("trained", c["steps"], c["task"], c["metric"])], by[("random_init", 0, c["task"], c["metric"])]
        assert c["n"] == 9 and a["folds_sha"] == b["folds_sha"]
        d = (np.asarray(a["fold_values"]) - np.asarray(b["fold_values"])).ravel()  # paired per fold
        assert math.isclose(c["diff_mean"], d.mean(), abs_tol=1e-4)
        se = d.std(ddof=1) * math.sqrt(1 / d.size + a["test_train_ratio"])  # corrected repeated k-fold CV
        assert math.isclose(c["diff_se"], se, abs_tol=1e-4) and c["diff_se"] >= c["naive_se"] - 1e-9
        assert c["beats_2se"] == (c["diff_mean"] > 2 * c["diff_se"]) and math.isfinite(c["gate_floor_se"])

    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n")
    write_section("bench_learning", "t", readme_body({"result": result}), readme)
    text = readme.read_text()
    assert "<!-- bench_learning:start -->" in text and "| crc_tissue | linear probe balanced accuracy |" in text
    assert "random init, 3 draws (min-max)" in text
    assert "GPU figures pending" in text and "Diagnostic" not in text


def test_diagnostic_mode_trains_on_the_crc_patches_and_is_labelled_a_diagnostic(tmp_path):
    from bench.bench_learning import main, readme_body

    result = main(["--diagnostic-crc-ssl", "--steps", "1", "--checkpoints", "1", "--batch", "4", "--repeats", "2",
                   "--workers", "0", "--out", str(tmp_path / "d.json"), "--no-readme"])
    assert result["mode"] == "diagnostic_crc_ssl" and result["config"]["pretraining_tiles"] == {"patches_crc_val_he_7k": 32}
    assert {r["task"] for r in result["rows"]} == {"crc_tissue"}
    assert {c["n"] for c in result["comparisons"]} == {2 * 4}
    assert "Diagnostic, not a result" in readme_body({"diagnostic_crc_ssl": result})
