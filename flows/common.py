"""Plumbing shared by the flows: settings in, explicit cache keys, retries, the Dask runner, MLflow runs.

Cache keys are explicit (`stage_cache_key`): `<task name>-<input hash>-<config hash>-<code hash>`,
the input hash naming one slide's inputs (QC, tiling; `pluto.fanout.slide_key`) or a batch's listing
(ingest), never a timestamp, and the code hash the source of the stage's pluto packages.
Results live in Prefect's result storage: a shared volume (PREFECT_LOCAL_STORAGE_PATH) or a storage
block (PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK) on a cluster, so every pod and Dask worker finds them.
A cached result is only trusted while the stage's outputs still exist in the work dir:
`cached_or_refresh` forces a re-run when they are gone.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Iterator

from prefect import Task
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff

from pluto.config import Settings, load_settings
from pluto.errors import PlutoError
from pluto.registry.provenance import git_sha
from pluto.tracking import Tracker, server_reachable, terminate_stale_run

log = logging.getLogger(__name__)


def resolve(config: dict[str, Any] | None = None) -> Settings:
    """Settings for a flow run: defaults < PLUTO_CONFIG file < env < `config` (the flow parameter).
    Sizes this process's slide handle pool and tile cache; Dask workers keep the defaults."""
    from pluto.slides.handles import configure_slide_access

    s = load_settings(**(config or {}))
    configure_slide_access(s.slides.handle_pool_size, s.slides.tile_cache_mib)
    return s


class HeldLock:
    """The held work-dir lock: `previous` is what a holder that died without releasing it recorded
    ({} when the last holder exited cleanly); `record` adds ids (flow run, MLflow run) to ours."""

    def __init__(self, path: Path, fh: IO[str], previous: dict[str, Any], record: dict[str, Any]) -> None:
        self.path, self.previous = path, previous
        self._fh, self._record = fh, record

    def record(self, **fields: Any) -> None:
        self._record.update(fields)
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(json.dumps(self._record))
        self._fh.flush()


@contextmanager
def work_dir_lock(work_dir: Path, holder: str, **ids: str) -> Iterator[HeldLock]:
    """One writer per work dir: a second retrain on the same dir fails at once, naming the holder.

    flock(2) on `<work_dir>/.retrain.lock`: the kernel drops it when the holder dies (kill -9
    included), so a crashed run never leaves a stale lock and its rerun gets in. The file's text
    (pid, host, `holder`, start time, `ids` and what `HeldLock.record` adds) feeds the error
    message, and is emptied on a clean exit: text found on acquisition is a dead holder's record
    (`HeldLock.previous`, see `end_dead_holder_runs`).
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
    except OSError as exc:  # e.g. ENOLCK: a file system without flock (some NFS mounts)
        fh.close()
        raise PlutoError(f"{path}: cannot lock the work dir ({exc.strerror}); put paths.work_dir on a local disk") from exc
    try:
        fh.seek(0)
        previous = _lock_record(fh.read(), path)
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        lock = HeldLock(path, fh, previous, {"pid": os.getpid(), "host": socket.gethostname(), "holder": holder, "since": started})
        lock.record(**ids)
        yield lock
    finally:
        fh.truncate(0)
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def _lock_record(text: str, path: Path) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        found = json.loads(text)
    except ValueError:
        log.warning("%s: unreadable record of a previous holder, ignored: %r", path, text[:200])
        return {}
    return found if isinstance(found, dict) else {}


def end_dead_holder_runs(previous: dict[str, Any], tracking_uri: str, successor: str) -> None:
    """Best effort: mark a dead lock holder's MLflow run (and its RUNNING stage runs) KILLED and its
    Prefect flow run Crashed, naming `successor`. Unreachable servers are logged, never raised."""
    if not previous:
        return
    note = f"{previous.get('holder', 'holder')} died without releasing the work dir (found by {successor})"
    run_id = previous.get("mlflow_run_id")
    if run_id and tracking_uri:
        try:
            if not server_reachable(tracking_uri):
                raise ConnectionError(f"{tracking_uri}/health does not answer")
            log.warning("%s: MLflow runs %s set KILLED", note, terminate_stale_run(tracking_uri, run_id, note) or "none left RUNNING")
        except Exception as exc:  # noqa: BLE001 - any server error: the new run must go on
            log.warning("%s: could not mark MLflow run %s KILLED: %s", note, run_id, str(exc)[:200])
    flow_run_id = previous.get("flow_run_id")
    if flow_run_id:
        try:
            crashed = crash_flow_run(flow_run_id, note)
            log.warning("%s: Prefect flow run %s %s", note, flow_run_id, "set Crashed" if crashed else "was no longer Running")
        except Exception as exc:  # noqa: BLE001 - as above
            log.warning("%s: could not mark Prefect flow run %s Crashed: %s", note, flow_run_id, str(exc)[:200])


def crash_flow_run(flow_run_id: str, message: str) -> bool:
    """Set a still-Running Prefect flow run Crashed (forced: its process is gone); False if it was not Running."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        if run.state is None or run.state.type != StateType.RUNNING:
            return False
        client.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)
    return True


def run_each_cached(task: Task, jobs: list[dict[str, Any]], marker: str, **shared: Any) -> list[dict[str, Any]]:
    """Run the cached per-slide `task` for each job (recomputed when its `out_dir` lacks `marker`); each result
    gains `recomputed` (0: it came from the cache)."""
    done = []
    for job in jobs:
        state = cached_or_refresh(task, [Path(job["out_dir"]) / marker])(**job, **shared, return_state=True)
        done.append({**state.result(), "recomputed": int(not was_cached(state))})
    return done


def stage_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """`<task>-<input>-<config>-<code>`; the code hash (`pluto.code_version`) retires outputs of older code."""
    return f"{context.task.name}-{parameters['input_hash']}-{parameters['config_hash']}-{parameters['code_hash']}"


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
