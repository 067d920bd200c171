"""Smoke test of bench/bench_probe.py (a few steps; the benchmark's timings are not asserted)."""

from __future__ import annotations

import argparse

import numpy as np


def test_bench_probe_runs_all_paths_on_a_learnable_mixture():
    from bench.bench_probe import class_mixture, run, table

    x, y = class_mixture(90, 8, 3, means_seed=0, sample_seed=0)
    x2, _ = class_mixture(90, 8, 3, means_seed=0, sample_seed=1)
    assert x.shape == (90, 8) and np.bincount(y).tolist() == [30, 30, 30] and not np.array_equal(x, x2)
    args = argparse.Namespace(device="cpu", dim=16, classes=3, train=2000, val=300, test=300, steps=600, eva_steps=8, seeds=1, threads=0,
                              data_seed=0)
    result = run(args)
    (row,) = result["rows"]
    assert row["steps"] <= 600 and row["epochs"] == -(-row["steps"] // 8)  # 2,000 rows in batches of 256: 8 steps an epoch
    assert 0 <= row["best_epoch"] < row["epochs"]
    # chance is 1/3 with SD ~0.03 on 300 test rows; 600 steps at lr 3e-4 reach ~0.8 (Bayes ~0.87)
    assert row["pluto_test_bacc"] > 0.5 and row["raw_test_bacc"] > 0.5
    assert result["eva"]["steps"] == 8 and result["eva"]["ms_per_step"] > 0
    text = table(result)
    assert "| 0 |" in text and "eva's own HeadModule" in text
