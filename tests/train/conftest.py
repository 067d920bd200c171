"""Train-area fixtures: a small tile manifest over the real CMU slide, and a CPU-sized config."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from pluto.ssl.config import ssl_preset
from pluto.train.config import ClusterSpec, TrainConfig

TILE_PX = 96


@pytest.fixture(scope="session")
def tiles_manifest(tmp_path_factory, cmu_svs) -> Path:
    """36 grid tiles (96 px at 0.5 um/px, level 0) from the tissue-rich centre of CMU-1-Small-Region."""
    out = tmp_path_factory.mktemp("tiles")
    xs, ys = range(600, 600 + 6 * 150, 150), range(900, 900 + 6 * 150, 150)
    rows = [dict(slide_id="cmu1", path=str(cmu_svs), level=0, x_l0=x, y_l0=y, mpp=0.5, tile_px=TILE_PX, read_px=TILE_PX,
                 region_id=i, tissue_frac=1.0, pen_frac=0.0, fold_frac=0.0, bubble_frac=0.0, mpp_override=float("nan"))
            for i, (x, y) in enumerate((x, y) for x in xs for y in ys)]
    from pluto.tiling.manifest import to_manifest

    to_manifest(pd.DataFrame(rows)).to_parquet(out / "part-00000.parquet", index=False)
    (out / "spec.json").write_text(json.dumps({"note": "tests/train fixture grid"}))
    return out


@pytest.fixture(scope="session")
def tiny_config():
    return make_tiny_config


def make_tiny_config(run_dir: Path, data: Path, **changes) -> TrainConfig:
    """pluto_tiny on 48/32 px crops with small heads: a step costs ~1 s on one contended core."""
    base = TrainConfig(arch="pluto_tiny", ssl=ssl_preset("tiny"), data=str(data), run_dir=str(run_dir), batch_per_gpu=2, global_batch=4,
                       steps=4, precision="fp32", num_workers=0, ckpt_every=2, keep_ckpts=3, max_consecutive_nan=2,
                       cluster=ClusterSpec(job_name="t", max_restarts=0))
    return replace(base, **changes)


def step_losses(run_dir: Path) -> dict[int, float]:
    """Last logged loss per step of a run's metrics.jsonl (a restarted or requeued attempt overwrites the steps it repeats)."""
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out
