"""Slurm-area fixtures: the real one-node cluster (tests/slurm/cluster.py), a password-protected
MLflow server, and `pluto pretrain --launcher slurm` settings for a 2-rank CPU job on the tests' tiles.

A missing Slurm, munge or MariaDB binary fails these tests (`make engines` installs them).
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, basic_auth_env
from tests.slurm.cluster import SlurmCluster, missing_engines, start_cluster
from tests.train.conftest import make_tiny_config, tiles_manifest  # noqa: F401  (the train area's tile fixture)
from pluto.services import free_port

CLI = Path(sys.executable).parent / "pluto"
STEPS = 60  # ~0.15 s a step on 2 CPU ranks: long enough to interrupt after the first checkpoint
CKPT_EVERY = 5


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> Iterator[SlurmCluster]:
    missing = missing_engines()
    if missing:
        pytest.fail(f"Slurm engine missing: {', '.join(missing)} not installed; run `make engines` (deploy/slurm/install-debian.sh)")
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    yield cluster
    cluster.stop()


@dataclass(frozen=True)
class AuthMlflow:
    url: str
    username: str
    password: str


@pytest.fixture(scope="session")
def auth_mlflow(tmp_path_factory) -> Iterator[AuthMlflow]:
    """`mlflow server --app-name basic-auth` (sqlite, local artifacts) with the committed basic_auth.ini;
    its user store in the temp dir, a fresh admin password."""
    from pluto.services import start_mlflow

    home = tmp_path_factory.mktemp("auth-mlflow")
    password = secrets.token_urlsafe(16)
    env, admin = basic_auth_env(home, password)
    svc = start_mlflow(home, app_name="basic-auth", env=env)
    yield AuthMlflow(svc.url, admin, password)
    svc.stop()


def write_settings(path: Path, run_dir: Path, tiles: Path, job_name: str, tracking_uri: str = "") -> Path:
    """Settings file for `pluto pretrain --launcher slurm`: the tests' tiny config as a 1-node CPU job of
    2 gloo ranks (2 CPUs) on the fixture's `cpu` partition, polled every second."""
    cfg = make_tiny_config(run_dir, tiles, steps=STEPS, ckpt_every=CKPT_EVERY, keep_ckpts=20)
    train = {k: v for k, v in cfg.to_dict().items() if k not in ("recipe_overrides", "cluster")}
    cluster = {"job_name": job_name, "nodes": 1, "gpus_per_node": 0, "cpu_ranks_per_node": 2, "cpus_per_task": 2,
               "partition": "cpu", "time_limit": "00:15:00", "rdzv_port": free_port(), "max_restarts": 0, "poll_s": 1,
               "setup": f"source {REPO / '.venv' / 'bin' / 'activate'}"}
    path.write_text(yaml.safe_dump({"train": {**train, "tracking_uri": tracking_uri, "cluster": cluster}}))
    return path


def pretrain_cmd(settings: Path) -> list[str]:
    return [str(CLI), "-c", str(settings), "pretrain", "--launcher", "slurm"]


def run_pretrain(settings: Path, env: dict[str, str], timeout_s: float = 600) -> subprocess.CompletedProcess:
    """The CLI from submission (or re-attach) to the job's end; `env` must carry SLURM_CONF."""
    return subprocess.run(pretrain_cmd(settings), capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout_s)




def wait_for(pred: Callable[[], object], timeout_s: float, what: str, diagnose: Callable[[], str] = lambda: ""):
    deadline = time.monotonic() + timeout_s
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{diagnose()}")
        time.sleep(0.2)


def job_ids(slurm: SlurmCluster, job_name: str) -> list[str]:
    """Every job of that name the accounting knows (one line per job: -X, no duplicates)."""
    return slurm.run("sacct", "-X", "-n", "-P", "--name", job_name, "-S", "now-1hour", "-o", "JobID").split()


def job_state(slurm: SlurmCluster, job_id: str) -> str:
    return slurm.run("squeue", "-h", "-j", job_id, "-o", "%T", check=False)


def job_output(run_dir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(run_dir.glob("slurm-*.out")))
