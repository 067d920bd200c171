"""Experiment tracking for one run: a local JSONL record always, MLflow whenever it can be reached.

Tracking must never be the reason a run dies or waits. Every call appends to a JSONL file (the
record of truth, and all that a machine without mlflow keeps) and queues the item; a daemon thread
sends the queue to MLflow in batches (MLflow takes at most 1000 metrics per request). While the
server is down the items stay queued and the thread retries with capped exponential backoff, so
they arrive once it is back; each attempt first probes the server's `/health` (a dead server costs
one refused connection, not MLflow's own minutes of HTTP retries). `close` gives a reachable
server `timeout_s` to take the rest, cutting a pending backoff short when the server has come
back, and does not wait on a dead one. A request the server refuses (4xx, e.g. a param changed on resume) is
dropped with a warning: retrying cannot help, and the JSONL record keeps it.

A run nests under `parent_run_id` (tag `mlflow.parentRunId`). With `run_id_path` the MLflow run id
is kept in that file, so a restarted or resumed training run logs into the same MLflow run.
`connect_now=True` creates the run in the caller's thread, so `run_id` is known on return when the
server is up (flows hand it to nested runs and to the registry). Standard library only; mlflow is
imported inside the methods that talk to it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
MAX_BATCH = 1000  # MLflow's log-batch limit on metrics per request
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")


def server_reachable(tracking_uri: str, timeout_s: float = 2.0) -> bool:
    """True when an http(s) MLflow server answers `GET /health` with 200 within `timeout_s`.

    Non-HTTP URIs (file, sqlite, databricks) are not probed and count as reachable.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout_s) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


class Tracker:
    """One tracked run. Use as a context manager (status FAILED on an exception) or call `close()`."""

    def __init__(
        self,
        jsonl_path: Path,
        tracking_uri: str = "",
        experiment: str = "pluto",
        run_name: str = "",
        *,
        parent_run_id: str = "",
        tags: dict[str, Any] | None = None,
        run_id_path: Path | None = None,
        connect_now: bool = False,
        system_metrics: bool = False,
        retry_min_s: float = 0.5,
        retry_max_s: float = 30.0,
        max_queued: int = 1_000_000,
    ) -> None:
        self.jsonl_path = Path(jsonl_path)
        self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        if tracking_uri and importlib.util.find_spec("mlflow") is None:
            log.warning("mlflow is not installed: tracking to %s only", self.jsonl_path)
            tracking_uri = ""
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.run_name = run_name or self.jsonl_path.parent.name
        self.run_id_path = Path(run_id_path) if run_id_path else None
        self.system_metrics = system_metrics
        self.retry_min_s, self.retry_max_s = retry_min_s, retry_max_s
        self._points: deque[tuple[str, float, int, int]] = deque(maxlen=max_queued)
        self._params: dict[str, str] = {}
        self._tags: dict[str, str] = {}
        self._artifacts: deque[tuple[str, str | None]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._retry = threading.Event()  # ends the sender's backoff early (close, server back)
        self._stop = threading.Event()
        self._client: Any = None
        self._monitor: Any = None
        self.run_id: str | None = None
        self.experiment_id = ""
        self.sent = 0
        self.down = False  # the last attempt to reach the server failed
        self._thread: threading.Thread | None = None
        all_tags = {**(tags or {}), **({PARENT_TAG: parent_run_id} if parent_run_id else {})}
        if all_tags:
            self.set_tags(all_tags)
        if not tracking_uri:
            return
        if connect_now:
            self._attempt(self._send_once)
        self._thread = threading.Thread(target=self._sender, name="pluto-mlflow-sender", daemon=True)
        self._thread.start()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close("FAILED" if exc_type else "FINISHED")

    @property
    def pending(self) -> int:
        """Items logged but not yet accepted by MLflow."""
        with self._lock:
            return len(self._points) + len(self._params) + len(self._tags) + len(self._artifacts)

    @property
    def url(self) -> str:
        """Browser address of the MLflow run (empty while there is none)."""
        if self.run_id is None:
            return ""
        return f"{self.tracking_uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    def log_params(self, params: dict[str, Any]) -> None:
        flat = {k: str(v)[:6000] for k, v in params.items()}  # MLflow's param value limit
        self._record({"params": flat}, self._params, flat)

    def set_tags(self, tags: dict[str, Any]) -> None:
        flat = {k: str(v) for k, v in tags.items()}
        self._record({"tags": flat}, self._tags, flat)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        now_ms = int(time.time() * 1000)
        clean = {k: float(v) for k, v in metrics.items()}
        self._append({"step": step, "t_ms": now_ms, **clean})
        if self.tracking_uri:
            with self._lock:
                self._points.extend((k, v, now_ms, step) for k, v in clean.items())
            self._wake.set()

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Upload the file at `path` (it must still exist when the sender gets to it)."""
        self._append({"artifact": str(path), "artifact_path": artifact_path})
        if self.tracking_uri:
            with self._lock:
                self._artifacts.append((str(path), artifact_path))
            self._wake.set()

    def _record(self, record: dict[str, Any], queue: dict[str, str], items: dict[str, str]) -> None:
        self._append(record)
        if self.tracking_uri:
            with self._lock:
                queue.update(items)
            self._wake.set()

    def _append(self, record: dict[str, Any]) -> None:
        with open(self.jsonl_path, "a") as fh:
            fh.write(json.dumps(record, default=str) + "\n")

    def close(self, status: str = "FINISHED", timeout_s: float = 30.0) -> None:
        """Give a reachable server up to `timeout_s` to take the queue (none when it is down, so the
        end of a run is not delayed), then mark the MLflow run `status` (FINISHED/FAILED/KILLED).
        What is left unsent stays in the JSONL record only."""
        if status not in RUN_STATUSES:
            raise ValueError(f"run status {status!r}: expected one of {RUN_STATUSES}")
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline and self._thread.is_alive():
            if self.down:
                if not server_reachable(self.tracking_uri):
                    break
                self._retry.set()  # back again while the sender backs off: retry now
            self._wake.set()
            time.sleep(0.05)
        self._stop.set()
        self._retry.set()
        self._wake.set()
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()) + 1.0)
        self._thread = None
        if self._monitor is not None:
            self._monitor.finish()
        if self.pending:
            log.warning("MLflow at %s unreachable: %d items not sent (kept in %s)", self.tracking_uri, self.pending, self.jsonl_path)
        elif self._client is not None:
            self._attempt(lambda: self._client.set_terminated(self.run_id, status))

    def _connect(self) -> None:
        """Re-attach to the run saved in `run_id_path`, or create one (and save its id there)."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.tracking_uri)
        if self.run_id_path is not None and self.run_id_path.is_file():
            run = client.get_run(self.run_id_path.read_text().strip())
            client.update_run(run.info.run_id, status="RUNNING")
        else:
            exp = client.get_experiment_by_name(self.experiment)
            exp_id = exp.experiment_id if exp else client.create_experiment(self.experiment)
            run = client.create_run(exp_id, run_name=self.run_name)
            if self.run_id_path is not None:
                self.run_id_path.write_text(run.info.run_id)
        self.run_id, self.experiment_id = run.info.run_id, run.info.experiment_id
        if self.system_metrics:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=5, tracking_uri=self.tracking_uri)
            self._monitor.start()
        self._client = client
        log.info("MLflow run %s (%s): %s", self.run_name, self.run_id, self.url)

    def _post(self, what: str, request: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Send one request; drop it if the server refuses it (4xx), raise (to retry) on anything else."""
        from mlflow.exceptions import MlflowException

        try:
            request(self.run_id, *args, **kwargs)
        except MlflowException as exc:
            if not 400 <= exc.get_http_status_code() < 500:
                raise
            log.warning("MLflow refused %s for run %s (%s); dropped, kept in %s", what, self.run_id, str(exc)[:200], self.jsonl_path)

    def _send_once(self) -> None:
        """Connect if needed, then send params and tags, metric batches and artifacts until none are left."""
        from mlflow.entities import Metric, Param, RunTag

        if not server_reachable(self.tracking_uri):
            raise ConnectionError(f"{self.tracking_uri}/health does not answer")
        if self._client is None:
            self._connect()
        while True:
            with self._lock:
                params, tags = dict(self._params), dict(self._tags)
                chunk = list(islice(self._points, MAX_BATCH))
                artifact = self._artifacts[0] if self._artifacts else None
            if params:  # params and tags in separate requests: a refused param must not take tags with it
                self._post("params", self._client.log_batch, params=[Param(k, v) for k, v in params.items()])
                self._forget(self._params, params)
            elif tags:
                self._post("tags", self._client.log_batch, tags=[RunTag(k, v) for k, v in tags.items()])
                self._forget(self._tags, tags)
            elif chunk:
                self._post("metrics", self._client.log_batch, metrics=[Metric(*p) for p in chunk])
                with self._lock:
                    for _ in chunk:
                        self._points.popleft()
                self.sent += len(chunk)
            elif artifact is not None:
                self._post(f"artifact {artifact[0]}", self._client.log_artifact, *artifact)
                with self._lock:
                    self._artifacts.popleft()
            else:
                return

    def _forget(self, queue: dict[str, str], sent: dict[str, str]) -> None:
        """Unqueue what was sent, unless it was re-logged with another value meanwhile."""
        with self._lock:
            for k, v in sent.items():
                if queue.get(k) == v:
                    del queue[k]

    def _attempt(self, fn: Callable[[], Any]) -> bool:
        """Run `fn`; on failure note the server as down (warning once per outage) and return False."""
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - any transport/server error: keep the items, retry later
            if not self.down:
                log.warning("MLflow at %s unreachable (%s); tracking to %s and retrying", self.tracking_uri, str(exc)[:200], self.jsonl_path)
            self.down = True
            return False
        if self.down:
            log.warning("MLflow at %s reachable again; queued items sent", self.tracking_uri)
        self.down = False
        return True

    def _sender(self) -> None:
        delay = self.retry_min_s
        while not self._stop.is_set():
            self._wake.wait(timeout=delay)
            self._wake.clear()
            if not self.pending and self._client is not None:
                continue
            if self._attempt(self._send_once):
                delay = self.retry_min_s
            else:
                delay = min(self.retry_max_s, delay * 2)
                self._retry.wait(timeout=delay)
                self._retry.clear()
