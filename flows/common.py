"""Plumbing shared by the flows: settings in, explicit cache keys, retries, the Dask runner, MLflow runs.

Cache keys are explicit (`stage_cache_key`): `<task name>-<input data hash>-<config hash>`, the
input hash being a content hash of the stage's input tables (or the slide listing for ingest),
never a timestamp. A cached result is only trusted while the stage's outputs still exist in the
work dir: `cached_or_refresh` forces a re-run when they are gone.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from prefect import Task
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff

from pluto.config import Settings, load_settings
from pluto.errors import PlutoError
from pluto.registry.provenance import git_sha
from pluto.tracking import Tracker


def resolve(config: dict[str, Any] | None = None) -> Settings:
    """Settings for a flow run: defaults < PLUTO_CONFIG file < env < `config` (the flow parameter)."""
    return load_settings(**(config or {}))


@contextmanager
def work_dir_lock(work_dir: Path, holder: str) -> Iterator[Path]:
    """One writer per work dir: a second retrain on the same dir fails at once, naming the holder.

    flock(2) on `<work_dir>/.retrain.lock`: the kernel drops it when the holder dies (kill -9
    included), so a crashed run never leaves a stale lock and its rerun gets in. The file's text
    (pid, host, `holder`, start time) only feeds the error message.
    """
    path = Path(work_dir) / ".retrain.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        owner = fh.read().strip() or "unknown holder"
        fh.close()
        raise PlutoError(
            f"{path}: work dir in use by another retrain ({owner}); wait for it to finish or set paths.work_dir elsewhere"
        ) from None
    try:
        fh.seek(0)
        fh.truncate()
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "holder": holder, "since": started}))
        fh.flush()
        yield path
    finally:
        fh.truncate(0)
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def stage_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    return f"{context.task.name}-{parameters['input_hash']}-{parameters['config_hash']}"


def cached_or_refresh(task: Task, outputs: list[Path]) -> Task:
    """The task, told to ignore its cache when any of its outputs is missing."""
    return task.with_options(refresh_cache=not all(Path(p).exists() for p in outputs))


def io_retries(task: Task, s: Settings) -> Task:
    """Retries with exponential backoff for tasks that touch storage or the network."""
    retries = s.chain.task_retries
    delays = exponential_backoff(backoff_factor=s.chain.retry_delay_s)(retries) if retries else 0
    return task.with_options(retries=retries, retry_delay_seconds=delays)


def local_cluster_kwargs(s: Settings) -> dict[str, Any]:
    """A Dask LocalCluster on loopback only, dashboard on a free port (None would mean a fixed 8787)."""
    return {
        "n_workers": s.chain.dask_workers, "threads_per_worker": 1, "processes": True,
        "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0",
    }


def dask_runner(s: Settings) -> Any:
    """Dask task runner: an existing cluster by address, else a LocalCluster on 127.0.0.1."""
    from prefect_dask import DaskTaskRunner

    if s.chain.dask_address:
        return DaskTaskRunner(address=s.chain.dask_address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=local_cluster_kwargs(s))


def stage_run(s: Settings, stage: str, parent_run_id: str | None, data_hash: str = "") -> Tracker:
    """MLflow run of one stage, nested under the retrain run; records git sha and data version."""
    tags = {"pluto.stage": stage, "pluto.git_sha": git_sha()}
    if data_hash:
        tags["pluto.data_hash"] = data_hash
    return Tracker(
        s.paths.work_dir / "tracking" / f"{stage}.jsonl", s.mlflow.tracking_uri, s.mlflow.experiment, stage,
        parent_run_id=parent_run_id or "", tags=tags, connect_now=True,
    )


def was_cached(state: Any) -> bool:
    return state.name == "Cached"
