"""Experiment tracking for one run: MLflow when reachable, a JSONL file when not.

Params and tags go out immediately; metrics are buffered and sent in batches (one request per
`flush_every` points instead of one per step) with retries and exponential backoff. If MLflow
stays unreachable the run degrades to `fallback_dir/<run_name>.jsonl` and the pipeline goes on:
tracking must never be the reason a training run dies. mlflow is imported lazily.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"


@dataclass
class Tracker:
    """Handle on one run. `client` is an `MlflowClient`, or None in file-fallback mode."""

    run_id: str
    client: Any
    fallback_path: Path
    tracking_uri: str = ""
    experiment_id: str = ""
    flush_every: int = 50
    retries: int = 3
    backoff_s: float = 1.0
    _buffer: list[tuple[str, float, int, int]] = field(default_factory=list)
    _monitor: Any = None

    @classmethod
    def start(
        cls,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        *,
        fallback_dir: Path,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
        system_metrics: bool = False,
        retries: int = 3,
    ) -> "Tracker":
        """Open a run (nested under `parent_run_id` if given); fall back to a file if MLflow is down."""
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        fallback_path = Path(fallback_dir) / f"{run_name}.jsonl"
        try:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri)
            exp = client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
            run = client.create_run(exp_id, tags=all_tags, run_name=run_name)
        except Exception as exc:  # noqa: BLE001 - any transport/server failure means: track offline
            log.warning("MLflow at %s unreachable (%s); tracking %s to %s", tracking_uri, exc, run_name, fallback_path)
            tracker = cls(run_id=f"offline-{uuid.uuid4().hex[:12]}", client=None, fallback_path=fallback_path, retries=retries)
            tracker._write({"event": "start", "run_name": run_name, "tags": all_tags})
            return tracker
        tracker = cls(
            run_id=run.info.run_id, client=client, fallback_path=fallback_path,
            tracking_uri=tracking_uri, experiment_id=exp_id, retries=retries,
        )
        if system_metrics:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            tracker._monitor = SystemMetricsMonitor(run.info.run_id, sampling_interval=5, tracking_uri=tracking_uri)
            tracker._monitor.start()
        log.info("MLflow run %s (%s): %s", run_name, run.info.run_id, tracker.url)
        return tracker

    @property
    def offline(self) -> bool:
        return self.client is None

    @property
    def url(self) -> str:
        """Browser address of the run (empty offline)."""
        if self.offline:
            return ""
        return f"{self.tracking_uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    def _write(self, record: dict[str, Any]) -> None:
        self.fallback_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.fallback_path, "a") as fh:
            fh.write(json.dumps({"run_id": self.run_id, "t": time.time(), **record}, default=str) + "\n")

    def _call(self, what: str, fn, *args, **kwargs) -> bool:
        """Run one MLflow call with retries; False (and a file record) when it keeps failing."""
        if self.offline:
            return False
        for attempt in range(self.retries + 1):
            try:
                fn(*args, **kwargs)
                return True
            except Exception as exc:  # noqa: BLE001 - retried, then recorded to the fallback file
                if attempt == self.retries:
                    log.warning("MLflow %s failed after %d tries (%s); kept in %s", what, attempt + 1, exc, self.fallback_path)
                    return False
                time.sleep(self.backoff_s * 2**attempt)
        return False

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        if not self._call("log_params", self._batch, params=items):
            self._write({"event": "params", "params": params})

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        if not self._call("set_tags", self._batch, tags=items):
            self._write({"event": "tags", "tags": tags})

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        now_ms = int(time.time() * 1000)
        self._buffer.extend((k, float(v), now_ms, step) for k, v in metrics.items())
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        from mlflow.entities import Metric

        points, self._buffer = self._buffer, []
        if self.offline:
            self._write({"event": "metrics", "points": points})
            return
        for i in range(0, len(points), 1000):  # MLflow caps a batch at 1000 metrics
            chunk = points[i : i + 1000]
            if not self._call("log_metrics", self._batch, metrics=[Metric(k, v, t, s) for k, v, t, s in chunk]):
                self._write({"event": "metrics", "points": chunk})

    def _batch(self, **kwargs: Any) -> None:
        self.client.log_batch(self.run_id, **kwargs)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if not self._call("log_artifact", lambda: self.client.log_artifact(self.run_id, str(path), artifact_path)):
            self._write({"event": "artifact", "path": str(path), "artifact_path": artifact_path})

    def end(self, status: str = "FINISHED") -> None:
        """Flush metrics, stop system metrics, close the run with `status` (FINISHED/FAILED/KILLED)."""
        self.flush()
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
        if not self._call("end", lambda: self.client.set_terminated(self.run_id, status)):
            self._write({"event": "end", "status": status})

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end("FAILED" if exc_type else "FINISHED")
