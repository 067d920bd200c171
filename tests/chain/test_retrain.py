"""The whole `retrain` flow against real servers on 127.0.0.1 (Prefect harness, MLflow), on the
embedded defaults: the DVC remote and the checkpoint store are file stores under the work dir (the
S3 path is the faults story's, tests/faults/chain_story.py, against moto).

Two runs on the same slides: the second takes ingest/QC/tiling from the Prefect cache, trains with
a new seed and registers a second version. Then: the champion serves embeddings over REST, the
data of version 1 comes back from the DVC remote into a fresh directory, the CLI in a new process
(MLflow restarted on the same store, no credentials) checks out, promotes and rolls back, and the
MLflow UI page of the registered model, rendered by headless Chromium, lists both versions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, shared_data) -> Path:
    """The bundled H&E slide and two OpenSlide fixtures: two fan-out batches on two Dask workers."""
    src = tmp_path_factory.mktemp("slides")
    shutil.copy(shared_data / "wsi" / "CMU-1-Small-Region.svs", src)
    for name in ("small.svs", "unreadable.svs"):
        shutil.copy(shared_data / "openslide_fixtures" / name, src)
    return src


def _config(work: Path, src: Path, mlflow_url: str) -> dict:
    from pluto.ssl import ssl_preset

    ssl = {**asdict(ssl_preset("demo")), "global_crop_px": 48, "local_crop_px": 32, "n_local_crops": 2,
           "head_hidden_dim": 64, "head_bottleneck_dim": 32, "n_prototypes": 256, "ibot_n_prototypes": 256,
           "koleo_weight": 0.0, "kde_weight": 0.05}  # KoLeo needs >= 4 tiles per GPU (train preflight)
    return {
        "paths": {"work_dir": str(work)},
        "mlflow": {"tracking_uri": mlflow_url, "experiment": "chain-retrain"},
        "tiling": {"mpps": [0.5, 1.0], "tile_pxs": [112]},
        "train": {"arch": "pluto_tiny", "ssl": ssl, "steps": 4, "batch_per_gpu": 2, "global_batch": 2,
                  "precision": "fp32", "num_workers": 0, "ckpt_every": 2},
        "eval": {"preset": "quick", "baselines": True, "n_seeds": 2, "cache_dir": str(work / "embeddings")},
        # 4 training steps leave the model at random init by design: the floor would decide by chance
        "chain": {"ingest_prefix": str(src), "fanout_batch_slides": 1, "dask_workers": 2, "task_retries": 1,
                  "retry_delay_s": 0.5, "quality_floor": False, "auto_promote": True},
    }


@pytest.fixture(scope="module")
def own_mlflow(tmp_path_factory):
    """A registry of its own: other modules register pluto-tiny too, and versions here must start at 1."""
    from pluto.services import start_mlflow

    svc = start_mlflow(tmp_path_factory.mktemp("retrain-mlflow"))
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, cohort, own_mlflow):
    from prefect.testing.utilities import prefect_test_harness

    work = tmp_path_factory.mktemp("work")
    config = _config(work, cohort, own_mlflow.url)
    from flows.retrain import retrain

    with prefect_test_harness(server_startup_timeout=240):
        first = retrain(config, seed=1)
        second = retrain(config, seed=2)
    return config, first, second


def test_second_run_reuses_data_stages_and_registers_a_new_version(two_runs):
    _, first, second = two_runs
    assert first["stages"]["qc"]["batches"] == 2  # two ok slides, one per batch, on two Dask workers
    assert not any(first["stages"][k]["cached"] for k in ("ingest", "qc", "tile", "pretrain"))
    assert all(second["stages"][k]["cached"] for k in ("ingest", "qc", "tile"))
    assert not second["stages"]["pretrain"]["cached"]  # new seed, new model
    assert first["data"]["md5"] == second["data"]["md5"]
    v1, v2 = (r["stages"]["register"]["record"] for r in (first, second))
    assert (v1["name"], v1["version"], v2["version"]) == ("pluto-tiny", 1, 2)
    store = (Path(two_runs[0]["paths"]["work_dir"]) / "stores" / "checkpoints").as_uri()
    assert v1["data_hash"] == first["data"]["md5"] and v1["checkpoint"]["uri"].startswith(store + "/")
    assert first["stages"]["register"]["decision"]["promote"]  # first version: no champion yet


def test_second_run_warm_starts_from_the_champion_of_the_first(two_runs):
    from mlflow.tracking import MlflowClient

    config, first, second = two_runs
    client = MlflowClient(config["mlflow"]["tracking_uri"])
    tags = [client.get_run(r["mlflow_run_id"]).data.tags["pluto.init_from"] for r in (first, second)]
    assert tags[0] == "scratch" and "/champion/v1/" in tags[1]  # no champion before the first run


def test_runs_are_nested_and_record_data_version_and_git_sha(two_runs):
    from mlflow.tracking import MlflowClient

    config, first, _ = two_runs
    client = MlflowClient(config["mlflow"]["tracking_uri"])
    parent_id = first["mlflow_run_id"]
    children = client.search_runs(
        [client.get_experiment_by_name("chain-retrain").experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'"
    )
    stages = {r.data.tags["pluto.stage"]: r for r in children}
    assert {"ingest", "qc", "tile", "pretrain", "evaluate", "register"} <= set(stages)
    assert stages["register"].data.tags["pluto.data_hash"] == first["data"]["md5"]
    assert all(r.data.tags["pluto.git_sha"] for r in children)


def test_data_of_version_1_pulls_into_a_fresh_directory(two_runs, tmp_path):
    from pluto.data_version import checkout_data, table_hash
    from pluto.registry.lineage import run_data_dvc
    from pluto.registry.register import get_record

    config, _, _ = two_runs
    record = get_record(config["mlflow"]["tracking_uri"], "pluto-tiny", version=1)
    remote = (Path(config["paths"]["work_dir"]) / "stores" / "dvc").as_uri()
    dvc_file = run_data_dvc(config["mlflow"]["tracking_uri"], record.run_id, tmp_path / "logged")
    fresh = tmp_path / "work"
    checkout_data(fresh, dvc_file, remote, md5=record.data_hash)
    work = Path(config["paths"]["work_dir"])
    assert table_hash(fresh / "catalog.parquet") == table_hash(work / "catalog.parquet")
    assert sorted(p.name for p in (fresh / "tiles").glob("part-*.parquet")) == sorted(p.name for p in (work / "tiles").glob("part-*.parquet"))


def test_cli_in_a_new_process_checks_out_promotes_and_rolls_back_with_no_credentials(two_runs, own_mlflow, tmp_path):
    """What a user does after the demo exits: MLflow started again on the same store, and the CLI with
    only the work dir and the (test-chosen) MLflow port set: no AWS or MLflow credentials anywhere."""
    from pluto.data_version import table_hash
    from pluto.services import start_mlflow

    config = two_runs[0]
    work = Path(config["paths"]["work_dir"])
    again = start_mlflow(own_mlflow.log_path.parent)  # start_mlflow logs into its store dir
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "PLUTO_"))}
    env |= {"PLUTO_PATHS__WORK_DIR": str(work), "PLUTO_MLFLOW__TRACKING_URI": again.url}

    def cli(*args: str) -> str:
        done = subprocess.run([str(Path(sys.executable).parent / "pluto"), *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    try:
        before = table_hash(work / "catalog.parquet")
        (work / "catalog.parquet").unlink()
        kept = (work / "data.dvc").read_bytes()
        (work / "data.dvc").unlink()
        assert "from its run's data.dvc" in cli("data", "checkout", "--model-version", "1", "--model", "pluto-tiny")
        assert table_hash(work / "catalog.parquet") == before
        assert (work / "data.dvc").read_bytes() == kept  # the file DVC wrote for that version, not a made-up pointer
        from mlflow.tracking import MlflowClient

        from pluto.registry.promotion import current_version

        other = 3 - current_version(MlflowClient(again.url), "pluto-tiny")  # the one of v1, v2 that is not champion
        out = cli("promote", "pluto-tiny", str(other), "--why", "new shell", "--force")  # 4-step models: the gate may block
        assert "gate: " in out and f"-> v{other}" in out
        assert "rollback" in cli("rollback", "pluto-tiny", "--why", "back")
    finally:
        again.stop()


def test_champion_serves_embeddings_over_rest(two_runs, tmp_path):
    from pluto.services import free_port, wait_for_port

    config, _, _ = two_runs
    port = free_port()
    venv_bin = Path(sys.executable).parent  # mlflow execs `uvicorn` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": config["mlflow"]["tracking_uri"], "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}"}
    mlflow_bin = str(venv_bin / "mlflow")
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen([mlflow_bin, "models", "serve", "--env-manager", "local", "-m", "models:/pluto-tiny@champion",
                                 "-h", "127.0.0.1", "-p", str(port), "-w", "1"], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for_port("127.0.0.1", port, timeout_s=240, proc=proc)
        batch = np.random.default_rng(0).standard_normal((2, 3, 112, 112)).astype(np.float32)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps({"inputs": batch.tolist()}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            emb = np.asarray(json.loads(resp.read())["predictions"], dtype=np.float32)
        assert emb.shape == (2, 96) and np.isfinite(emb).all() and not np.allclose(emb[0], emb[1])
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_mlflow_ui_model_page_shows_both_versions_in_headless_chromium(two_runs, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium not installed: apt-get install -y chromium")
    config, _, _ = two_runs
    url = f"{config['mlflow']['tracking_uri']}/#/models/pluto-tiny"
    out = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path}",
         "--virtual-time-budget=30000", "--dump-dom", url],
        capture_output=True, text=True, timeout=180,
    )
    assert "pluto-tiny" in out.stdout, out.stderr[-2000:]
    assert "Version 1" in out.stdout and "Version 2" in out.stdout


def test_each_version_points_at_its_retrain_run_with_metrics_params_dataset_and_commit(two_runs):
    from mlflow.tracking import MlflowClient

    from pluto.registry.lineage import EXPERIMENT_KIND_TAG, GIT_COMMIT_TAG, MODEL_DEVELOPMENT

    config, first, second = two_runs
    client = MlflowClient(config["mlflow"]["tracking_uri"])
    for version, result in ((1, first), (2, second)):
        mv = client.get_model_version("pluto-tiny", str(version))
        assert mv.run_id == result["mlflow_run_id"]  # the retrain run, not the register stage's
        run = client.get_run(mv.run_id)
        assert run.info.run_name == f"retrain pluto-tiny seed {result['seed']}"
        metrics = run.data.metrics
        assert metrics["suite_score"] == pytest.approx(result["stages"]["evaluate"]["score"])
        assert {"crc_tissue.cls.balanced_accuracy", "crc_tissue.cls_mean.balanced_accuracy", "baseline.random_init.crc_tissue.cls.balanced_accuracy", "magnification.cls.balanced_accuracy"} <= set(metrics)
        assert {"arch", "steps", "global_batch", "patch_sizes", "seed", "init_from"} <= set(run.data.params)
        assert run.data.params["seed"] == str(result["seed"])
        assert run.data.tags[GIT_COMMIT_TAG] == run.data.tags["pluto.git_sha"]
        (dataset,) = run.inputs.dataset_inputs
        assert dataset.dataset.digest == result["data"]["md5"] and json.loads(dataset.dataset.source)["uri"].endswith("/data.dvc")
        assert {t.key: t.value for t in dataset.tags}["mlflow.data.context"] == "training"
        assert "data/data.dvc" in {a.path for a in client.list_artifacts(mv.run_id, "data")}
        assert mv.description.startswith(f"pluto-tiny v{version}: 4 steps of pluto_tiny (seed {result['seed']})")
    assert "from champion v1" in client.get_model_version("pluto-tiny", "2").description
    assert "vs champion v1" in client.get_model_version("pluto-tiny", "2").description
    exp = client.get_experiment_by_name("chain-retrain")
    assert exp.tags[EXPERIMENT_KIND_TAG] == MODEL_DEVELOPMENT


def _chromium_text(url: str, profile: Path) -> str:
    import re

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium not installed: apt-get install -y chromium")
    out = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
         "--window-size=1800,1200", "--virtual-time-budget=30000", "--dump-dom", url],
        capture_output=True, text=True, timeout=180,
    )
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", out.stdout))


def test_mlflow_ui_compares_two_versions_metrics_and_fills_dataset_and_models(two_runs, tmp_path):
    """What a user sees in the MLflow UI, rendered by headless Chromium from a fresh browser profile."""
    from mlflow.tracking import MlflowClient

    config, first, second = two_runs
    uri = config["mlflow"]["tracking_uri"]
    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name("chain-retrain").experiment_id
    ids = [first["mlflow_run_id"], second["mlflow_run_id"]]
    compare = _chromium_text(f"{uri}/#/compare-runs?runs={json.dumps(ids)}&experiments={json.dumps([exp_id])}"
                             "&workflowType=machine_learning", tmp_path / "compare")
    assert "suite_score" in compare and "crc_tissue.cls.balanced_accuracy" in compare
    for run_id in ids:  # the UI rounds to 3 decimals and, as JavaScript does, drops trailing zeros (0.48, not 0.480)
        assert str(round(client.get_run(run_id).data.metrics["suite_score"], 3)) in compare, compare[:3000]
    table = _chromium_text(f"{uri}/#/experiments/{exp_id}/runs?workflowType=machine_learning", tmp_path / "runs")
    assert "Dataset" in table and "Models" in table
    assert f"pluto-data ({first['data']['md5']})" in table, table[:3000]
    assert f"retrain pluto-tiny seed {first['seed']}" in table
