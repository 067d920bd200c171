"""Experiment tracking for one run: a local JSONL record always, MLflow whenever it can be reached.

Tracking must never be the reason a run dies or waits. Every call appends to a JSONL file (the
record of truth, and all that a machine without mlflow keeps) and queues the item; a daemon thread
sends the queue to MLflow in batches (MLflow takes at most 1000 metrics per request). While the
server is down the items stay queued and the thread retries with capped exponential backoff, so
they arrive once it is back; each attempt first probes the server's `/health` (a dead server costs
one refused connection, not MLflow's own minutes of HTTP retries). `close` gives a reachable
server `timeout_s` to take the rest, cutting a pending backoff short when the server has come
back, and does not wait on a dead one.

A server behind a login (a team's, `mlflow server --app-name basic-auth`) takes the standard
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD variables or ~/.mlflow/credentials, read by
mlflow itself; nothing here reads, stores or logs them, and messages show the server without any
userinfo. A refused login (401) or permission (403) is a configuration error, not an outage: a
Tracker whose server answers so at start raises `TrackingAuthError`, so a job stops at once instead
of training for days with nothing tracked. Refused later (a password rotated mid-run), the items
stay queued as in an outage, and whatever is left is replayed by `sync_runs` once the credentials
are fixed. A request refused for itself (another 4xx, e.g. a param changed on resume) leaves the
queue, since resending cannot help, but is kept: the JSONL record holds it and the session's `end`
record counts it as unsent, so `sync_runs` checks that run again.

The JSONL file is a sequence of sessions (one per Tracker): a header record (`session`, experiment,
run name, `run_id_path`), then params/tags/metric/artifact records, a `{"session", "run_id"}` record
once the MLflow run is known, and an `{"session", "end", "unsent"}` record from `close`. Several
sessions may share a file (stage runs of successive retrains, a resumed training run). `sync_runs`
replays into MLflow what a session's run lacks (metrics matched on key, step and original
timestamp; params and tags by key), so what was queued when a run ended during an outage, or when
its process was killed, arrives later, exactly once.

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
import urllib.parse
import uuid
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from pluto.errors import ConfigError, PlutoError

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
MAX_BATCH = 1000  # MLflow's log-batch limit on metrics per request
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
MAX_BATCH_KV = 100  # MLflow's log-batch limit on params and on tags per request
AUTH_STATUSES = (401, 403)  # the login or its permissions refused: the same request fails until they are fixed


class TrackingAuthError(ConfigError):
    """The MLflow server refused this client's login (HTTP 401) or its permissions (HTTP 403)."""


def shown_uri(tracking_uri: str) -> str:
    """`tracking_uri` fit for messages: any user:password@ part removed."""
    parts = urllib.parse.urlsplit(tracking_uri)
    if not parts.username and not parts.password:
        return tracking_uri
    host = parts.hostname or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host))


def http_status(exc: BaseException) -> int | None:
    """The HTTP status an MLflow client error carries, None for anything else (a refused connection)."""
    get = getattr(exc, "get_http_status_code", None)
    return get() if callable(get) else None


def refusal(tracking_uri: str, status: int) -> str:
    """What to fix when the server at `tracking_uri` answered 401/403; names the variables, never their values."""
    what = "refused the login" if status == 401 else "refused this user the access it needs"
    return (f"MLflow at {shown_uri(tracking_uri)} {what} (HTTP {status}): set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (or ~/.mlflow/credentials) to an account of that server with write access")


def check_login(tracking_uri: str) -> None:
    """Raise `TrackingAuthError` when the http(s) server at `tracking_uri` answers but refuses this client.

    One authenticated request (an experiment search). A server that does not answer is not judged:
    that is an outage, which the Tracker rides out.
    """
    if not tracking_uri.startswith(("http://", "https://")) or not server_reachable(tracking_uri):
        return
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri).search_experiments(max_results=1)
    except MlflowException as exc:
        status = http_status(exc)
        if status in AUTH_STATUSES:
            raise TrackingAuthError(refusal(tracking_uri, status)) from None
        log.debug("MLflow at %s: login not checked (%s)", shown_uri(tracking_uri), str(exc)[:200])


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
        wants_mlflow = bool(tracking_uri)
        if tracking_uri and importlib.util.find_spec("mlflow") is None:
            log.warning("mlflow is not installed: tracking to %s only", self.jsonl_path)
            tracking_uri = ""
        if tracking_uri:
            check_login(tracking_uri)  # a wrong password stops the job here, before any record, not days later
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
        self.refused: int | None = None  # 401/403 while the server refuses our login; None otherwise
        self.rejected = 0  # items the server refused for themselves (4xx): in the JSONL only, counted unsent
        self._thread: threading.Thread | None = None
        self._file_lock = threading.Lock()
        self.session = uuid.uuid4().hex
        known = self.run_id_path.read_text().strip() if self.run_id_path and self.run_id_path.is_file() else None
        self._append({"session": self.session, "experiment": experiment, "run_name": self.run_name, "mlflow": wants_mlflow,
                      "run_id_path": str(self.run_id_path) if self.run_id_path else None, "run_id": known, "t_ms": _now_ms()})
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
        # workflowType: MLflow 3's UI otherwise shows a fresh browser its GenAI views, whatever the experiment's kind
        return f"{shown_uri(self.tracking_uri).rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}?workflowType=machine_learning"

    def log_params(self, params: dict[str, Any]) -> None:
        flat = {k: str(v)[:6000] for k, v in params.items()}  # MLflow's param value limit
        self._record({"params": flat}, self._params, flat)

    def set_tags(self, tags: dict[str, Any]) -> None:
        flat = {k: str(v) for k, v in tags.items()}
        self._record({"tags": flat}, self._tags, flat)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        now_ms = _now_ms()
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
        with self._file_lock:
            _append_jsonl(self.jsonl_path, record)

    def close(self, status: str = "FINISHED", timeout_s: float = 30.0) -> None:
        """Give a reachable server up to `timeout_s` to take the queue (none when it is down or refuses
        our login, so the end of a run is not delayed), then mark the MLflow run `status`
        (FINISHED/FAILED/KILLED). What is left unsent stays in the JSONL record only."""
        if status not in RUN_STATUSES:
            raise ValueError(f"run status {status!r}: expected one of {RUN_STATUSES}")
        if self._thread is None:  # no sender: closed before, or mlflow missing here (nothing sent: unsent unknown)
            unsent = self.pending if self.tracking_uri else None
            self._append({"session": self.session, "end": status, "unsent": unsent, "t_ms": _now_ms()})
            return
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline and self._thread.is_alive():
            if self.down:
                if self.refused or not server_reachable(self.tracking_uri):
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
        end_ms = _now_ms()
        why = refusal(self.tracking_uri, self.refused) if self.refused else f"MLflow at {shown_uri(self.tracking_uri)} unreachable"
        if self.pending:
            log.warning("%s: %d items not sent (kept in %s; `pluto tracking sync` replays them)", why, self.pending, self.jsonl_path)
        elif self._client is not None and not self._attempt(lambda: self._client.set_terminated(self.run_id, status, end_ms)):
            self._append({"session": self.session, "end": status, "unsent": 1 + self.rejected, "t_ms": end_ms})  # the status itself
            return
        self._append({"session": self.session, "end": status, "unsent": self.pending + self.rejected, "t_ms": end_ms})

    def _connect(self) -> None:
        """Re-attach to the run saved in `run_id_path`, or create one (and save its id there)."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.tracking_uri)
        if self.run_id_path is not None and self.run_id_path.is_file():
            run = client.get_run(self.run_id_path.read_text().strip())
            client.update_run(run.info.run_id, status="RUNNING")
        else:
            exp = client.get_experiment_by_name(self.experiment)
            # tagged as model development: MLflow 3's UI then opens the experiment on its runs, not on GenAI traces
            exp_id = exp.experiment_id if exp else client.create_experiment(
                self.experiment, tags={"mlflow.experimentKind": "custom_model_development"})
            run = client.create_run(exp_id, run_name=self.run_name)
            if self.run_id_path is not None:
                self.run_id_path.write_text(run.info.run_id)
        self.run_id, self.experiment_id = run.info.run_id, run.info.experiment_id
        self._append({"session": self.session, "run_id": self.run_id})
        if self.system_metrics:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=5, tracking_uri=self.tracking_uri)
            self._monitor.start()
        self._client = client
        log.info("MLflow run %s (%s): %s", self.run_name, self.run_id, self.url)

    def _post(self, what: str, items: int, request: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Send one request of `items` items. Refused for itself (4xx but 401/403), it leaves the queue
        and is kept: counted unsent and noted in the JSONL, for `sync_runs`. Anything else raises (to retry)."""
        from mlflow.exceptions import MlflowException

        try:
            request(self.run_id, *args, **kwargs)
        except MlflowException as exc:
            status = http_status(exc)
            if status is None or not 400 <= status < 500 or status in AUTH_STATUSES:
                raise
            self.rejected += items
            self._append({"session": self.session, "refused": what, "status": status, "items": items})
            log.warning("MLflow refused %s for run %s (HTTP %d: %s); kept in %s, `pluto tracking sync` retries it",
                        what, self.run_id, status, str(exc)[:200], self.jsonl_path)

    def _send_once(self) -> None:
        """Connect if needed, then send params and tags, metric batches and artifacts until none are left."""
        from mlflow.entities import Metric, Param, RunTag

        if not server_reachable(self.tracking_uri):
            raise ConnectionError(f"{shown_uri(self.tracking_uri)}/health does not answer")
        if self._client is None:
            self._connect()
        while True:
            with self._lock:
                params, tags = dict(self._params), dict(self._tags)
                chunk = list(islice(self._points, MAX_BATCH))
                artifact = self._artifacts[0] if self._artifacts else None
            if params:  # params and tags in separate requests: a refused param must not take tags with it
                self._post("params", len(params), self._client.log_batch, params=[Param(k, v) for k, v in params.items()])
                self._forget(self._params, params)
            elif tags:
                self._post("tags", len(tags), self._client.log_batch, tags=[RunTag(k, v) for k, v in tags.items()])
                self._forget(self._tags, tags)
            elif chunk:
                self._post("metrics", len(chunk), self._client.log_batch, metrics=[Metric(*p) for p in chunk])
                with self._lock:
                    for _ in chunk:
                        self._points.popleft()
                self.sent += len(chunk)
            elif artifact is not None:
                self._post(f"artifact {artifact[0]}", 1, self._client.log_artifact, *artifact)
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
        """Run `fn`; on failure note the server as down (warning once per outage or refusal) and return False."""
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - any transport/server error: keep the items, retry later
            status = http_status(exc)
            if status in AUTH_STATUSES:
                if self.refused != status:
                    log.warning("%s; tracking to %s, and `pluto tracking sync` replays it once fixed",
                                refusal(self.tracking_uri, status), self.jsonl_path)
                self.refused = status
            elif not self.down:
                log.warning("MLflow at %s unreachable (%s); tracking to %s and retrying", shown_uri(self.tracking_uri),
                            str(exc)[:200], self.jsonl_path)
            self.down = True
            return False
        if self.down:
            log.warning("MLflow at %s reachable again; queued items sent", shown_uri(self.tracking_uri))
        self.down, self.refused = False, None
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


def _now_ms() -> int:
    return int(time.time() * 1000)


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record, default=str) + "\n")


@dataclass
class _Session:
    """What one Tracker session wrote to one JSONL file."""

    session: str
    path: Path
    experiment: str
    run_name: str
    run_id_path: str | None
    started_ms: int
    run_id: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    points: list[tuple[str, float, int, int]] = field(default_factory=list)  # (key, value, t_ms, step), as mlflow's Metric
    end: str | None = None
    end_ms: int | None = None
    unsent: int | None = None


@dataclass(frozen=True)
class SyncReport:
    """What `sync_runs` sent: counts over all files (0 everywhere on a second sync)."""

    files: int
    runs: int  # runs checked against the server
    runs_created: int  # sessions that never reached MLflow, now with a run
    metrics: int
    params: int
    tags: int
    terminated: int  # runs set to the status their session ended with

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> SyncReport:
        return cls(**d)


def read_sessions(path: Path) -> list[_Session]:
    """The MLflow-bound sessions of one Tracker JSONL file, in file order (records before any header are skipped)."""
    sessions: dict[str, _Session] = {}
    current: _Session | None = None
    for line_no, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:  # a line cut short (disk full, killed mid-write) must not block the rest
            log.warning("%s:%d: not a JSON record, skipped: %r", path, line_no, line[:200])
            continue
        if "step" in rec and "t_ms" in rec:
            if current is not None:
                step, t_ms = rec.pop("step"), rec.pop("t_ms")
                current.points.extend((k, float(v), t_ms, step) for k, v in rec.items())
        elif "experiment" in rec and "session" in rec:
            current = None
            if rec["mlflow"]:
                current = _Session(rec["session"], Path(path), rec["experiment"], rec["run_name"], rec["run_id_path"], rec["t_ms"],
                                   rec["run_id"])
            sessions[rec["session"]] = current
        elif "session" in rec:
            found = sessions.get(rec["session"])
            if found is not None and "run_id" in rec:
                found.run_id = rec["run_id"]
            elif found is not None and "end" in rec:
                found.end, found.end_ms, found.unsent = rec["end"], rec["t_ms"], rec["unsent"]
        elif current is not None and "params" in rec:
            for k, v in rec["params"].items():
                current.params.setdefault(k, v)  # MLflow keeps a run's first value of a param
        elif current is not None and "tags" in rec:
            current.tags.update(rec["tags"])
    return [s for s in sessions.values() if s is not None]


def tracking_files(root: Path) -> list[Path]:
    """Tracker JSONL files under `root` (a work dir): `*.jsonl` whose first record is a session header."""
    found = []
    for path in sorted(Path(root).rglob("*.jsonl")):
        with open(path) as fh:
            first = fh.readline()
        try:
            head = json.loads(first)
        except ValueError:
            continue
        if isinstance(head, dict) and "session" in head and "experiment" in head:
            found.append(path)
    return found


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _run_of(client: Any, s: _Session) -> tuple[str, bool]:
    """The MLflow run of session `s`: its recorded id, its run-id file's, or a new run (recorded in the JSONL)."""
    if s.run_id:
        return s.run_id, False
    if s.run_id_path and Path(s.run_id_path).is_file():
        run_id = Path(s.run_id_path).read_text().strip()
    else:
        exp = client.get_experiment_by_name(s.experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(s.experiment)
        run_id = client.create_run(exp_id, start_time=s.started_ms, run_name=s.run_name).info.run_id
        if s.run_id_path:
            Path(s.run_id_path).write_text(run_id)
    _append_jsonl(s.path, {"session": s.session, "run_id": run_id, "by": "sync"})
    s.run_id = run_id
    return run_id, True


def sync_runs(paths: Iterable[Path], tracking_uri: str, on_progress: Callable[[int, int], None] | None = None) -> SyncReport:
    """Replay into MLflow what the Tracker JSONL files at `paths` hold and the server lacks. Idempotent.

    Sessions whose `close` saw everything accepted are skipped. For the others (closed during an
    outage, killed, never connected) each run gets the params and tags it lacks (by key) and the
    metric points it lacks, matched on (key, step, timestamp): a step recomputed after a resume is
    a point of its own, a point already there is never sent twice. Points keep their original
    timestamps; requests are log_batch chunks within MLflow's limits. A run still RUNNING whose last
    session ended is set to that session's status and end time. Run the sync when no tracker is
    writing these runs (a live sender could send a point the sync sends too). A refused login is
    `TrackingAuthError` before anything is sent; a chunk refused for itself (4xx) is skipped with a
    warning, and the rest is sent.
    """
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if not server_reachable(tracking_uri):
        raise PlutoError(f"MLflow at {shown_uri(tracking_uri)} unreachable; nothing replayed, retry `pluto tracking sync` later")
    check_login(tracking_uri)
    client = MlflowClient(tracking_uri)
    paths = list(paths)
    by_session: dict[str, _Session] = {}
    for path in paths:
        for s in read_sessions(path):
            seen = by_session.get(s.session)  # a copied file repeats its sessions: keep the fuller record
            if seen is None or len(s.points) > len(seen.points):
                by_session[s.session] = s
    todo = [s for s in by_session.values() if s.unsent != 0]
    counts = dict.fromkeys(("runs", "runs_created", "metrics", "params", "tags", "terminated"), 0)
    runs: dict[str, list[_Session]] = {}
    for s in todo:
        run_id, created = _run_of(client, s)
        counts["runs_created"] += created
        runs.setdefault(run_id, []).append(s)
    for i, (run_id, sessions) in enumerate(runs.items()):
        try:
            run = client.get_run(run_id)
        except MlflowException as exc:
            if exc.get_http_status_code() != 404:
                raise
            log.warning("MLflow run %s (recorded in %s) not found on %s; skipped", run_id, sessions[0].path, shown_uri(tracking_uri))
            continue
        params = {k: v for s in reversed(sessions) for k, v in s.params.items() if k not in run.data.params}  # first value wins
        tags = {k: v for s in sessions for k, v in s.tags.items() if k not in run.data.tags}
        have = {(k, m.step, m.timestamp) for k in {p[0] for s in sessions for p in s.points}
                for m in client.get_metric_history(run_id, k)}
        points = list(dict.fromkeys(p for s in sessions for p in s.points if (p[0], p[3], p[2]) not in have))
        for kind, items, size in (("params", [Param(k, v) for k, v in params.items()], MAX_BATCH_KV),
                                  ("tags", [RunTag(k, v) for k, v in tags.items()], MAX_BATCH_KV),
                                  ("metrics", [Metric(*p) for p in points], MAX_BATCH)):
            for chunk in _chunks(items, size):
                try:
                    client.log_batch(run_id, **{kind: chunk})
                except MlflowException as exc:
                    status = http_status(exc)
                    if status is None or not 400 <= status < 500 or status in AUTH_STATUSES:
                        raise
                    log.warning("MLflow run %s refused %d %s (HTTP %d: %s); skipped", run_id, len(chunk), kind, status, str(exc)[:200])
        last = sessions[-1]
        if last.end is not None and run.info.status == "RUNNING":  # replaying data never changes the status
            client.set_terminated(run_id, last.end, last.end_ms)
            counts["terminated"] += 1
        counts["runs"] += 1
        counts["metrics"] += len(points)
        counts["params"] += len(params)
        counts["tags"] += len(tags)
        if points or params or tags:
            log.info("MLflow run %s: replayed %d metric points, %d params, %d tags", run_id, len(points), len(params), len(tags))
        if on_progress is not None:
            on_progress(i + 1, len(runs))
    return SyncReport(files=len(paths), **counts)


def terminate_stale_run(tracking_uri: str, run_id: str, note: str, status: str = "KILLED") -> list[str]:
    """Mark the MLflow run `run_id` and its still-RUNNING direct children (stage runs) `status`.

    For a run whose process is known dead (its flock was released). Grandchildren are left alone: a
    training job launched by the dead flow may live on and be re-attached by its successor. `note`
    (who found it dead) goes to tag `pluto.terminated_by`. Returns the ids changed.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    children = client.search_runs([run.info.experiment_id], f"tags.`{PARENT_TAG}` = '{run_id}' and attributes.status = 'RUNNING'")
    changed = []
    for r in [*children, run]:
        if r.info.status == "RUNNING":
            client.set_tag(r.info.run_id, "pluto.terminated_by", note)
            client.set_terminated(r.info.run_id, status)
            changed.append(r.info.run_id)
    return changed
