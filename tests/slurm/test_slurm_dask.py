"""The data plane on Slurm: deploy/dask/slurm_cluster.py starts Dask workers as Slurm jobs
(dask-jobqueue), and the ingest and QC flows fan out on them through `chain.dask_address`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pandas as pd
import pytest

from pluto.fanout import QC_SUMMARY
from pluto.services import free_port
from tests.conftest import REPO
from tests.slurm.conftest import wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.integration]


def _worker_jobs(slurm) -> list[str]:
    return slurm.run("squeue", "-h", "--name", "dask-worker", "-t", "RUNNING", "-o", "%i").split()


def test_ingest_and_qc_fan_out_on_slurm_launched_dask_workers(slurm, cmu_svs, tmp_path):
    from distributed import Client
    from prefect.testing.utilities import prefect_test_harness

    from flows.ingest import ingest_flow
    from flows.qc import qc_flow

    logs = tmp_path / "dask-logs"
    cmd = [sys.executable, "deploy/dask/slurm_cluster.py", "--jobs", "2", "--partition", "cpu", "--cores", "1", "--memory", "1GB",
           "--walltime", "00:15:00", "--port", str(free_port()), "--dashboard-address", "127.0.0.1:0", "--interface", "lo",
           "--prologue", f"source {REPO / '.venv' / 'bin' / 'activate'}", "--log-dir", str(logs)]
    scheduler = subprocess.Popen(cmd, cwd=REPO, env=slurm.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        address = scheduler.stdout.readline().strip()
        assert address.startswith("tcp://127.0.0.1:"), scheduler.stderr.read() if scheduler.poll() is not None else address
        with Client(address) as client:
            client.wait_for_workers(2, timeout=180)
            jobs = client.run(lambda: os.environ.get("SLURM_JOB_ID"))
            assert sorted(jobs.values()) == sorted(_worker_jobs(slurm))  # every worker is a running Slurm job

            src = tmp_path / "slides"
            src.mkdir()
            os.link(cmu_svs, src / cmu_svs.name)
            work = tmp_path / "work"
            config = {"paths": {"work_dir": str(work)}, "mlflow": {"tracking_uri": ""},
                      "chain": {"ingest_prefix": str(src), "dask_address": address, "fanout_batch_slides": 1, "task_retries": 0}}
            with prefect_test_harness(server_startup_timeout=240):
                ingested = ingest_flow(config)
                checked = qc_flow(config)
            executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
        assert (ingested["slides"], ingested["ok"], checked["slides"]) == (1, 1, 1)
        assert sum(executed.values()) >= 2  # the ingest batch and the QC batch ran on the Slurm workers
        assert pd.read_parquet(work / "catalog.parquet")["status"].tolist() == ["ok"]
        assert len(pd.read_parquet(work / "qc" / QC_SUMMARY)) == 1
    finally:
        scheduler.send_signal(signal.SIGTERM)
        scheduler.communicate(timeout=60)
    wait_for(lambda: not _worker_jobs(slurm), 60, "the worker jobs to be cancelled")
