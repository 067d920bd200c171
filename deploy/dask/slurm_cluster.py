"""Dask cluster for the data plane on Slurm (dask-jobqueue): a scheduler here, workers as Slurm jobs.

    pip install dask-jobqueue   # on the login node, in the project's environment
    python deploy/dask/slurm_cluster.py --jobs 50      # prints the scheduler address, keeps it up
    PLUTO_CHAIN__DASK_ADDRESS=tcp://<login-node>:8786 prefect deployment run retrain/weekly

Each Slurm job runs one worker with one thread per core it asked for (QC/tiling are CPU-bound
and release no GIL-heavy work across threads); the partition is a CPU partition, not the GPUs.
"""

from __future__ import annotations

import argparse
import signal


def main() -> None:
    from dask_jobqueue import SLURMCluster

    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=20)
    p.add_argument("--partition", default="cpu")
    p.add_argument("--cores", type=int, default=8)
    p.add_argument("--memory", default="32GB")
    p.add_argument("--walltime", default="24:00:00")
    p.add_argument("--port", type=int, default=8786)
    a = p.parse_args()
    cluster = SLURMCluster(
        queue=a.partition, cores=a.cores, processes=a.cores, memory=a.memory, walltime=a.walltime,
        job_script_prologue=["source .venv/bin/activate"], scheduler_options={"port": a.port},
        log_directory="work/logs/dask-slurm",
    )
    cluster.scale(jobs=a.jobs)
    print(cluster.scheduler_address, flush=True)
    signal.sigwait({signal.SIGINT, signal.SIGTERM})
    cluster.close()


if __name__ == "__main__":
    main()
