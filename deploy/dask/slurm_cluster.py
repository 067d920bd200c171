"""Dask cluster for the data plane on Slurm (dask-jobqueue): a scheduler here, workers as Slurm jobs.

    pip install dask-jobqueue   # on the login node, in the project's environment (the `cluster` extra)
    python deploy/dask/slurm_cluster.py --jobs 50      # prints the scheduler address, keeps it up
    PLUTO_CHAIN__DASK_ADDRESS=tcp://<login-node>:8786 prefect deployment run retrain/weekly

Run it from the checkout: each worker job starts there and sources `.venv/bin/activate` (`--prologue`
to change that). Each Slurm job runs one worker process per core it asked for, one thread each
(QC/tiling are CPU-bound and release no GIL-heavy work across threads); the partition is a CPU
partition, not the GPUs. SIGINT/SIGTERM scancel the worker jobs. tests/slurm runs this script on a
real Slurm cluster with `--interface lo`.
"""

from __future__ import annotations

import argparse
import signal


def main(argv: list[str] | None = None) -> None:
    from dask_jobqueue import SLURMCluster

    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=20)
    p.add_argument("--partition", default="cpu")
    p.add_argument("--cores", type=int, default=8)
    p.add_argument("--memory", default="32GB")
    p.add_argument("--walltime", default="24:00:00")
    p.add_argument("--port", type=int, default=8786)
    p.add_argument("--dashboard-address", default=":8787")
    p.add_argument("--interface", default=None, help="network interface of scheduler and workers (e.g. ib0); default: the host's address")
    p.add_argument("--prologue", default="source .venv/bin/activate", help="shell line each worker job runs first")
    p.add_argument("--log-dir", default="work/logs/dask-slurm", help="the worker jobs' Slurm output files")
    a = p.parse_args(argv)
    # block the stop signals before any thread starts, so sigwait below receives them
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    cluster = SLURMCluster(
        queue=a.partition, cores=a.cores, processes=a.cores, memory=a.memory, walltime=a.walltime, interface=a.interface,
        job_script_prologue=[a.prologue], scheduler_options={"port": a.port, "dashboard_address": a.dashboard_address},
        log_directory=a.log_dir,
    )
    cluster.scale(jobs=a.jobs)
    print(cluster.scheduler_address, flush=True)
    signal.sigwait({signal.SIGINT, signal.SIGTERM})
    cluster.close()


if __name__ == "__main__":
    main()
