"""Training metrics from rank 0: a local JSONL record always, MLflow when it can be reached.

A training step must never wait on, or die because of, the tracking server. `log_metrics`
appends to `<run_dir>/metrics.jsonl` (the record of truth, also what a GPU machine without mlflow
keeps) and queues the points; a daemon thread sends them to MLflow in batches. While the server
is down the points stay queued and the thread retries with capped exponential backoff, so they
arrive once it is back. The MLflow run id is saved in the run directory, so a restarted or resumed
run keeps logging into the same MLflow run. mlflow is imported lazily, in the thread.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id"
MAX_BATCH = 1000  # MLflow's log-batch limit on metrics per request


class MetricsTracker:
    """Rank-0 tracker. Use as a context manager or call `close()` to drain the queue."""

    def __init__(
        self,
        run_dir: Path,
        tracking_uri: str = "",
        experiment: str = "pluto-pretrain",
        run_name: str = "",
        *,
        retry_min_s: float = 0.5,
        retry_max_s: float = 30.0,
        max_queued: int = 1_000_000,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.run_dir / "metrics.jsonl"
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name or self.run_dir.name
        self.retry_min_s, self.retry_max_s = retry_min_s, retry_max_s
        self._points: deque[tuple[str, float, int, int]] = deque(maxlen=max_queued)
        self._params: dict[str, str] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._client: Any = None
        self.run_id: str | None = None
        self.sent = 0
        self.down = False  # the last send attempt failed
        self._thread: threading.Thread | None = None
        if tracking_uri:
            self._thread = threading.Thread(target=self._sender, name="pluto-mlflow-sender", daemon=True)
            self._thread.start()

    def __enter__(self) -> MetricsTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._points) + (1 if self._params else 0)

    def log_params(self, params: dict[str, Any]) -> None:
        flat = {k: str(v)[:6000] for k, v in params.items()}
        self._append({"params": flat})
        if self.tracking_uri:
            with self._lock:
                self._params.update(flat)
            self._wake.set()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now_ms = int(time.time() * 1000)
        clean = {k: float(v) for k, v in metrics.items()}
        self._append({"step": step, "t_ms": now_ms, **clean})
        if self.tracking_uri:
            with self._lock:
                self._points.extend((k, v, now_ms, step) for k, v in clean.items())
            self._wake.set()

    def _append(self, record: dict[str, Any]) -> None:
        with open(self.jsonl_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def close(self, timeout_s: float = 30.0) -> None:
        """Give a reachable server up to `timeout_s` to take the queue (none when it is down, so the
        end of training is not delayed); what is left stays in the JSONL file only."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout_s
        while self.pending and not self.down and time.monotonic() < deadline and self._thread.is_alive():
            self._wake.set()
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()) + 1.0)
        if self.pending:
            log.warning("MLflow at %s unreachable: %d points not sent (kept in %s)", self.tracking_uri, self.pending, self.jsonl_path)
        self._thread = None

    def _connect(self) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.tracking_uri)
        id_file = self.run_dir / RUN_ID_FILE
        if id_file.is_file():
            run_id = id_file.read_text().strip()
            client.get_run(run_id)
        else:
            exp = client.get_experiment_by_name(self.experiment)
            exp_id = exp.experiment_id if exp else client.create_experiment(self.experiment)
            run_id = client.create_run(exp_id, run_name=self.run_name).info.run_id
            id_file.write_text(run_id)
            log.info("MLflow run %s in experiment %s at %s", run_id, self.experiment, self.tracking_uri)
        self._client, self.run_id = client, run_id

    def _send_once(self) -> None:
        from mlflow.entities import Metric, Param

        if self._client is None:
            self._connect()
        with self._lock:
            params = dict(self._params)
        if params:
            self._client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()])
            with self._lock:
                for k in params:
                    self._params.pop(k, None)
        while True:
            with self._lock:
                chunk = [self._points[i] for i in range(min(MAX_BATCH, len(self._points)))]
            if not chunk:
                return
            self._client.log_batch(self.run_id, metrics=[Metric(k, v, t, s) for k, v, t, s in chunk])
            with self._lock:
                for _ in chunk:
                    self._points.popleft()
            self.sent += len(chunk)

    def _sender(self) -> None:
        delay = self.retry_min_s
        while not self._stop.is_set():
            self._wake.wait(timeout=delay)
            self._wake.clear()
            if not self.pending:
                continue
            try:
                self._send_once()
            except Exception as exc:  # noqa: BLE001 - any transport/server error: keep the points, retry later
                if not self.down:
                    log.warning("MLflow at %s unreachable (%s); queueing metrics and retrying", self.tracking_uri, str(exc)[:200])
                self.down = True
                delay = min(self.retry_max_s, delay * 2)
                self._stop.wait(timeout=delay)
                continue
            if self.down:
                log.warning("MLflow at %s reachable again; queued metrics sent", self.tracking_uri)
            self.down, delay = False, self.retry_min_s
