"""Per-slide cache keys at cohort scale, and Prefect's result storage shared between processes.

Three separate processes (each its own PREFECT_HOME, so its own default result folder) run the
ingest, qc and tile flows against one Prefect server on 127.0.0.1 and one Dask cluster, as pods of
a cluster deployment would. A computes a 20-slide cohort; one slide lands, sorting first, so every
fan-out batch shifts; B, whose result storage is the shared volume A wrote to
(PREFECT_LOCAL_STORAGE_PATH, as deploy/prefect/k8s-work-pool.json sets it), runs QC and tiling for
that slide alone and leaves every other slide's outputs and ingest record as they were; C, with a
result folder of its own, finds no cache and tiles every slide again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SHARED_RESULTS = "PREFECT_LOCAL_STORAGE_PATH"
RUN_STAGES = """
import json, sys
import pluto
from flows.ingest import ingest_flow
from flows.qc import qc_flow
from flows.tile import tile_flow
config, stages = json.loads(sys.argv[1]), sys.argv[2].split(",")
flows = {"ingest": ingest_flow, "qc": qc_flow, "tile": tile_flow}
print("RESULT " + json.dumps({"pluto": pluto.__file__, **{name: flows[name](config) for name in stages}}, default=str))
"""


def _snapshot(dest: Path) -> Path:
    """A copy of pluto/ and flows/ that the flow processes run (their working directory, ahead of
    the editable install), so one code version holds from A to C even while someone edits the checkout."""
    for pkg in ("pluto", "flows"):
        shutil.copytree(REPO / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _run(stages: str, config: dict, home: Path, storage: Path, api: str, code: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(home), "PREFECT_API_URL": api, SHARED_RESULTS: str(storage),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    out = subprocess.run([sys.executable, "-c", RUN_STAGES, json.dumps(config), stages], cwd=code, env=env,
                         capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])


def _store(work: Path) -> dict[str, tuple[int, int]]:
    """Every file of the per-slide stores and ingest records: (inode, mtime_ns), by path relative to the work dir."""
    folders = [work / ".fanout" / "qc", work / ".fanout" / "tiles", work / "ingest" / "records"]
    files = [p for folder in folders for p in folder.rglob("*") if p.is_file()]
    return {str(p.relative_to(work)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}


def _slide_dirs(work: Path, stage: str) -> set[str]:
    return {p.name for p in (work / ".fanout" / stage).iterdir() if p.is_dir()}


def test_cluster_deployments_keep_results_on_the_shared_volume():
    """Flow-run pods (the k8s work pool's env, which deployments' env merges into) and Dask workers
    put Prefect's results on the volume they all mount; no cluster deployment sets another place."""
    pool = json.loads((REPO / "deploy" / "prefect" / "k8s-work-pool.json").read_text())
    pod = pool["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    flows_path = pool["variables"]["properties"]["env"]["default"][SHARED_RESULTS]
    assert any(flows_path.startswith(m["mountPath"] + "/") for m in pod["containers"][0]["volumeMounts"])
    dask = next(d for d in yaml.safe_load_all((REPO / "deploy" / "dask" / "kubernetes-cluster.yaml").read_text())
                if d["kind"] == "DaskCluster")
    worker = dask["spec"]["worker"]["spec"]["containers"][0]
    assert {e["name"]: e["value"] for e in worker["env"]}[SHARED_RESULTS] == flows_path
    assert any(flows_path.startswith(m["mountPath"] + "/") for m in worker["volumeMounts"])
    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    cluster = [d for d in deployments if d["work_pool"]["name"] == "pluto-k8s"]
    assert cluster and all(SHARED_RESULTS not in d["work_pool"].get("job_variables", {}).get("env", {}) for d in cluster)


@pytest.mark.integration
@pytest.mark.slow
def test_new_slide_recomputes_only_itself_and_processes_share_the_cache(tmp_path):
    from distributed import LocalCluster

    from bench.bench_ingest_load import make_cohort
    from pluto.services import start_prefect
    from pluto.tiling import read_manifest

    made = make_cohort(tmp_path / "made", 21)
    first = min(made, key=lambda p: hashlib.sha256(p.read_bytes()).hexdigest())  # sorts before every other slide
    src = tmp_path / "cohort"
    src.mkdir()
    for p in made:
        if p != first:
            os.link(p, src / p.name)
    work, shared = tmp_path / "work", tmp_path / "shared-results"
    code = _snapshot(tmp_path / "src")
    svc = start_prefect(tmp_path / "server")
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster:
            config = {"paths": {"work_dir": str(work)}, "mlflow": {"tracking_uri": ""},
                      "chain": {"ingest_prefix": str(src), "fanout_batch_slides": 4, "dask_address": cluster.scheduler_address,
                                "task_retries": 0},
                      "tiling": {"mpps": [0.5, 1.0], "tile_pxs": [224], "mode": "sample", "regions_per_slide": 8}}  # fmt: skip
            api = f"{svc.url}/api"
            a = _run("ingest,qc,tile", config, tmp_path / "home-a", shared, api, code)
            before, manifest_a = _store(work), read_manifest(work / "tiles")
            qc_dirs, tile_dirs = _slide_dirs(work, "qc"), _slide_dirs(work, "tiles")
            os.link(first, src / first.name)
            b = _run("ingest,qc,tile", config, tmp_path / "home-b", shared, api, code)
            after, manifest_b = _store(work), read_manifest(work / "tiles")
            c = _run("tile", config, tmp_path / "home-c", tmp_path / "own-results", api, code)
    finally:
        svc.stop()
    assert {Path(run["pluto"]).parents[1] for run in (a, b, c)} == {tmp_path / "src"}
    versions = {stage: {run[stage]["code_hash"] for run in (a, b)} for stage in ("qc", "tile")}
    assert all(len(v) == 1 for v in versions.values()), f"pluto's source changed while the test ran ({versions})"
    assert (a["qc"]["slides"], a["qc"]["recomputed"], a["tile"]["recomputed"]) == (20, 20, 20)
    assert (b["ingest"]["slides"], b["qc"]["slides"], b["qc"]["recomputed"], b["tile"]["recomputed"]) == (21, 21, 1, 1)
    assert (c["tile"]["recomputed"], c["tile"]["cached"]) == (21, False)  # no shared storage: no cache hit
    new_id = sorted(pd.read_parquet(work / "catalog.parquet")["slide_id"])[0]
    assert new_id not in manifest_a["slide_id"].values
    new_qc, new_tiles = _slide_dirs(work, "qc") - qc_dirs, _slide_dirs(work, "tiles") - tile_dirs
    assert [d.split("-")[0] for d in (*new_qc, *new_tiles)] == [new_id, new_id]  # one new folder per stage, the new slide's
    assert qc_dirs <= _slide_dirs(work, "qc") and tile_dirs <= _slide_dirs(work, "tiles")  # nothing pruned
    assert {k: v for k, v in after.items() if k in before} == before  # every old output file untouched ...
    added = after.keys() - before.keys()  # ... and the only new ones are the new slide's (and its ingest record)
    assert len(added) > 3 and all(new_id in k for k in added if not k.startswith("ingest"))
    assert len([k for k in added if k.startswith("ingest")]) == 1
    old = manifest_b[manifest_b["slide_id"] != new_id].reset_index(drop=True)
    pd.testing.assert_frame_equal(old, manifest_a.reset_index(drop=True))  # same rows, same region ids
    assert manifest_b.groupby("region_id")["slide_id"].nunique().max() == 1  # region ids unique after the merge
