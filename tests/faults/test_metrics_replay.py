"""Metrics that never reached MLflow (server down while a run logged, closed or was killed) replayed later.

The runs log against a dead 127.0.0.1 port, standing for the outage; `sync_runs` then replays their
JSONL records into the session's real MLflow server. Every point arrives once with its original
timestamp, and a second sync sends nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pluto.services import free_port
from pluto.tracking import PARENT_TAG, SyncReport, Tracker, read_sessions, sync_runs, tracking_files

pytestmark = pytest.mark.integration

KILLED_RUN = """
import os, sys
from pluto.tracking import Tracker
tr = Tracker(sys.argv[1], sys.argv[2], "faults-replay", "killed", tags={"pluto.stage": "pretrain"})
for step in range(3):
    tr.log_metrics({"loss": 3.0 - step}, step=step)
os._exit(137)  # like kill -9: no close, no end record
"""


@pytest.fixture()
def quiet_mlflow_client(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def _points(url: str, run_id: str, key: str) -> list[tuple[int, int, float]]:
    from mlflow.tracking import MlflowClient

    return sorted((m.step, m.timestamp, m.value) for m in MlflowClient(url).get_metric_history(run_id, key))


def _logged(path, key: str) -> list[tuple[int, int, float]]:
    return sorted((r["step"], r["t_ms"], r[key]) for r in map(json.loads, path.read_text().splitlines()) if key in r and "step" in r)


def test_runs_that_never_reached_mlflow_are_created_and_filled_exactly_once(tmp_path, mlflow_server, quiet_mlflow_client):
    from mlflow.tracking import MlflowClient

    dead = f"http://127.0.0.1:{free_port()}"
    work = tmp_path / "work"
    closed = work / "tracking" / "train.jsonl"
    with Tracker(closed, dead, "faults-replay", "closed", parent_run_id="p-0", tags={"pluto.stage": "train"}, connect_now=True) as tr:
        tr.log_params({"arch": "pluto_tiny", "steps": 600})
        for step in range(600):  # 1,200 points: more than one log_batch request
            tr.log_metrics({"loss": 1.0 / (step + 1), "lr": step * 1e-5}, step=step)
    assert tr.run_id is None and tr.pending > 0
    killed = work / "train" / "run-1" / "metrics.jsonl"
    killed.parent.mkdir(parents=True)
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, str(killed), dead], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 137, proc.stderr
    (work / "registry").mkdir()
    (work / "registry" / "promotions.jsonl").write_text('{"model": "pluto-tiny", "version": 1}\n')  # not a Tracker file

    assert tracking_files(work) == [closed, killed]
    first = sync_runs(tracking_files(work), mlflow_server.url)
    assert first == SyncReport(files=2, runs=2, runs_created=2, metrics=1203, params=2, tags=3, terminated=1)

    client = MlflowClient(mlflow_server.url)
    (closed_session,), (killed_session,) = read_sessions(closed), read_sessions(killed)
    run = client.get_run(closed_session.run_id)  # the new run's id was recorded in the JSONL
    assert run.info.run_name == "closed" and run.info.status == "FINISHED"
    assert run.data.params == {"arch": "pluto_tiny", "steps": "600"}
    assert run.data.tags[PARENT_TAG] == "p-0" and run.data.tags["pluto.stage"] == "train"
    for key in ("loss", "lr"):
        assert _points(mlflow_server.url, run.info.run_id, key) == _logged(closed, key)  # original timestamps, once each
    assert run.info.end_time == closed_session.end_ms
    gone = client.get_run(killed_session.run_id)
    assert gone.info.status == "RUNNING"  # no end record: the sync does not guess how a killed run ended
    assert _points(mlflow_server.url, gone.info.run_id, "loss") == _logged(killed, "loss")

    again = sync_runs(tracking_files(work), mlflow_server.url)
    assert again == SyncReport(files=2, runs=2, runs_created=0, metrics=0, params=0, tags=0, terminated=0)
    assert _points(mlflow_server.url, run.info.run_id, "loss") == _logged(closed, "loss")
    assert len(client.search_runs([run.info.experiment_id])) == 2


def test_a_resumed_run_logged_during_an_outage_gets_only_its_missing_points(tmp_path, mlflow_server, quiet_mlflow_client):
    from typer.testing import CliRunner

    from pluto.cli import app

    run_dir = tmp_path / "work" / "train" / "run"
    kw = {"experiment": "faults-replay-resume", "run_id_path": run_dir / "mlflow_run_id"}
    with Tracker(run_dir / "metrics.jsonl", mlflow_server.url, **kw) as live:
        live.log_params({"world_size": 2})
        for step in range(4):
            live.log_metrics({"loss": float(step)}, step=step)
    assert live.pending == 0
    with Tracker(run_dir / "metrics.jsonl", f"http://127.0.0.1:{free_port()}", **kw) as resumed:  # MLflow down on resume
        resumed.log_params({"world_size": 1})  # immutable in MLflow: the first value stays
        for step in range(3, 6):  # step 3 recomputed after the resume: a point of its own
            resumed.log_metrics({"loss": 10.0 + step}, step=step)
    assert resumed.pending > 0

    env = {"PLUTO_MLFLOW__TRACKING_URI": mlflow_server.url}
    out = CliRunner().invoke(app, ["tracking", "sync", "--work", str(tmp_path / "work")], env=env)
    assert out.exit_code == 0, out.output
    assert "1 runs checked (0 created): sent 3 metric points, 0 params, 0 tags; 0 runs ended" in out.output
    got = _points(mlflow_server.url, live.run_id, "loss")
    assert got == _logged(run_dir / "metrics.jsonl", "loss") and len(got) == 7
    assert [v for s, _, v in got if s == 3] == [3.0, 13.0]

    out = CliRunner().invoke(app, ["tracking", "sync", str(run_dir / "metrics.jsonl")], env=env)
    assert "sent 0 metric points, 0 params, 0 tags; 0 runs ended" in out.output
    assert _points(mlflow_server.url, live.run_id, "loss") == got


def test_sync_with_mlflow_down_names_the_server_and_sends_nothing(tmp_path, quiet_mlflow_client):
    from pluto.errors import PlutoError

    dead = f"http://127.0.0.1:{free_port()}"
    with Tracker(tmp_path / "m.jsonl", dead, "faults-replay") as tr:
        tr.log_metrics({"loss": 1.0})
    with pytest.raises(PlutoError, match=f"MLflow at {dead} unreachable"):
        sync_runs([tmp_path / "m.jsonl"], dead)
    assert read_sessions(tmp_path / "m.jsonl")[0].run_id is None
