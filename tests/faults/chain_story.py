"""One faulty retrain story, run once per session and shared by the chain fault, concurrency and security tests.

Real servers on 127.0.0.1: the session's moto S3, an MLflow server and a Prefect server of its own
(started by pluto.services), the test AWS credentials in the environment. On a fresh work dir:

1. run A: `retrain(seed=7)` in a child process; once its training job has written a checkpoint, the
   job's ranks are paused (SIGSTOP) so the rest of the story cannot outrun it;
2. run B: a second `retrain` on the same work dir and data, in this process, while A holds it;
3. A's process group is killed with SIGKILL (the torchrun job, in its own session, lives on);
4. run C: `retrain(seed=7)` again in this process; when it logs that it re-attached to A's job,
   the ranks are resumed (SIGCONT) and C runs to a registered model.

`story(config, ...)` returns the `Story` record; servers stop at the end of the session.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SEED = 7
STEPS = 10
_STORY: dict[str, Story] = {}


@dataclass
class Story:
    config: dict[str, Any]
    work: Path
    env: dict[str, str]  # the AWS test credentials the runs had
    mlflow_url: str
    mlflow_store: Path
    prefect_api: str
    prefect_home: Path
    server_pids: dict[str, int]
    job_id: str = ""
    job_state_before_kill: str = ""
    a_returncode: int | None = None
    a_data_md5: str = ""
    b_error: str = ""
    hashes: dict[str, dict[str, str]] = field(default_factory=dict)  # moment -> table -> hash
    reattach_log: str = ""
    c: dict[str, Any] = field(default_factory=dict)


def table_hashes(work: Path) -> dict[str, str]:
    """Content hashes of the stage outputs: catalog, QC tables, tile manifest."""
    from pluto.data_version import table_hash, tables_hash

    return {
        "catalog": table_hash(work / "catalog.parquet"),
        "qc": tables_hash([work / "qc" / "qc_summary.parquet", *(work / "qc").glob("*/qc.parquet")]),
        "tiles": tables_hash(sorted((work / "tiles").glob("*.parquet"))),
    }


def _config(work: Path, src: Path, mlflow_url: str, s3_url: str, buckets: tuple[str, str]) -> dict[str, Any]:
    """The demo settings shrunk to CI size: 2 slides, 112-px tiles, 10 steps of pluto_tiny on 48/32-px crops."""
    from flows.demo import demo_overrides

    base = demo_overrides(work, mlflow_url)
    ssl = {"global_crop_px": 48, "local_crop_px": 32, "n_local_crops": 2, "head_hidden_dim": 64,
           "head_bottleneck_dim": 32, "n_prototypes": 256, "ibot_n_prototypes": 256, "koleo_weight": 0.0, "kde_weight": 0.05}
    return {
        **base,
        "mlflow": {"tracking_uri": mlflow_url, "experiment": "faults-story"},
        "s3": {"endpoint_url": s3_url},
        "tiling": {"mpps": [0.5, 1.0], "tile_pxs": [112]},
        "train": {**base["train"], "ssl": ssl, "steps": STEPS, "batch_per_gpu": 2, "global_batch": 2, "ckpt_every": 2},
        "eval": {**base["eval"], "n_seeds": 2},
        "chain": {**base["chain"], "quality_floor": False, "ingest_prefix": str(src), "fanout_batch_slides": 1, "task_retries": 1, "retry_delay_s": 0.5,
                  "dvc_remote": f"s3://{buckets[0]}/dvc", "checkpoint_store": f"s3://{buckets[1]}/ckpt"},
    }


def _wait(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"run A exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


class _ReattachSeen(logging.Handler):
    """Resumes the paused ranks as soon as the launcher logs that it re-attached."""

    def __init__(self, on_seen):
        super().__init__(logging.INFO)
        self.message = ""
        self._on_seen = on_seen

    def emit(self, record: logging.LogRecord) -> None:
        if "re-attaching" in record.getMessage():
            self.message = record.getMessage()
            self._on_seen()


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _run(tmp_path_factory, shared_data: Path, moto_url: str, aws: dict[str, str], cleanup) -> Story:
    import boto3
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

    from flows.retrain import retrain
    from pluto.data_version import read_version
    from pluto.errors import PlutoError
    from pluto.services import start_mlflow, start_prefect
    from pluto.train.launch import LocalLauncher

    root = tmp_path_factory.mktemp("story")
    src, work = root / "slides", root / "work"
    src.mkdir()
    shutil.copy(shared_data / "wsi" / "CMU-1-Small-Region.svs", src)
    shutil.copy(shared_data / "openslide_fixtures" / "small.svs", src)
    old_env = {k: os.environ.get(k) for k in aws}
    os.environ.update(aws)

    def restore_env() -> None:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    cleanup(restore_env)
    buckets = ("story-data", "story-artifacts")
    s3 = boto3.client("s3", endpoint_url=moto_url)
    for b in buckets:
        s3.create_bucket(Bucket=b)
    mlflow = start_mlflow(root / "mlflow", log_dir=work / "logs")
    cleanup(mlflow.stop)
    prefect = start_prefect(root / "prefect")
    cleanup(prefect.stop)
    api = f"{prefect.url}/api"
    results = root / "prefect-results"
    config = _config(work, src, mlflow.url, moto_url, buckets)
    story = Story(config=config, work=work, env=dict(aws), mlflow_url=mlflow.url, mlflow_store=root / "mlflow",
                  prefect_api=api, prefect_home=root / "prefect", server_pids={"mlflow": mlflow.proc.pid, "prefect": prefect.proc.pid})

    # A: a child process, killed while it waits for its training job
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(results)}
    a_log = work / "logs" / "retrain-A.log"
    a_log.parent.mkdir(parents=True, exist_ok=True)
    code = "import json, sys; from flows.retrain import retrain; retrain(json.loads(sys.argv[1]), seed=int(sys.argv[2]))"
    with open(a_log, "wb") as fh:
        proc_a = subprocess.Popen([sys.executable, "-c", code, json.dumps(config), str(SEED)], cwd=REPO, env=env, stdout=fh,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    cleanup(lambda: proc_a.poll() is None and os.killpg(proc_a.pid, signal.SIGKILL))
    launcher = LocalLauncher()
    job = Path(_wait(lambda: next(iter(work.glob("train/*/launch/*.json")), None), 900, "the training job", proc_a, a_log))
    ranks = _wait(lambda: launcher.rank_pids(str(job)), 300, "the training ranks", proc_a, a_log)
    _wait(lambda: any(job.parent.parent.glob("checkpoints/*")), 600, "a first checkpoint", proc_a, a_log)
    _signal_all(ranks, signal.SIGSTOP)
    cleanup(lambda: _signal_all(ranks, signal.SIGCONT))
    story.job_id, story.job_state_before_kill = str(job), job.read_text()
    story.a_data_md5 = read_version(work).md5
    story.hashes["A"] = table_hashes(work)

    with temporary_settings(updates={PREFECT_API_URL: api, PREFECT_RESULTS_LOCAL_STORAGE_PATH: results}):
        # B: the same retrain on the same work dir while A holds it
        try:
            retrain(config, seed=SEED + 1)
        except PlutoError as exc:
            story.b_error = str(exc)
        story.hashes["B"] = table_hashes(work)

        os.killpg(proc_a.pid, signal.SIGKILL)
        story.a_returncode = proc_a.wait(timeout=60)

        # C: the rerun; resume the paused ranks once it has re-attached to A's job
        seen = _ReattachSeen(lambda: _signal_all(ranks, signal.SIGCONT))
        launch_log = logging.getLogger("pluto.train.launch")
        old_level = launch_log.level
        launch_log.setLevel(logging.INFO)
        launch_log.addHandler(seen)
        try:
            story.c = retrain(config, seed=SEED)
        finally:
            launch_log.removeHandler(seen)
            launch_log.setLevel(old_level)
            _signal_all(ranks, signal.SIGCONT)
        story.reattach_log = seen.message
        story.hashes["C"] = table_hashes(work)
        APILogWorker.drain_all(timeout=10)
    return story


def story(request: pytest.FixtureRequest, tmp_path_factory, shared_data: Path, moto_url: str) -> Story:
    """The session's story (run on first use); its servers stop when the session ends."""
    if "story" not in _STORY:
        root_conftest = request.config.pluginmanager.get_plugin(str(REPO / "tests" / "conftest.py"))
        aws = {"AWS_ACCESS_KEY_ID": root_conftest.TEST_AWS_KEY, "AWS_SECRET_ACCESS_KEY": root_conftest.TEST_AWS_SECRET,
               "AWS_DEFAULT_REGION": "us-east-1"}
        _STORY["story"] = _run(tmp_path_factory, shared_data, moto_url, aws, request.config.add_cleanup)
    return _STORY["story"]
