"""Rank-0 tracker: JSONL always, MLflow via a background sender that survives a dead server."""

from __future__ import annotations

import json
import time

import pytest

from pluto.services import free_port, start_mlflow
from pluto.train.tracking import MetricsTracker


def _history(url: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(url).get_metric_history(run_id, key))


@pytest.mark.integration
def test_metrics_reach_real_mlflow_and_jsonl(tmp_path, mlflow_server):
    with MetricsTracker(tmp_path / "run", mlflow_server.url, experiment="t-train", run_name="ok") as tr:
        tr.log_params({"arch": "pluto_tiny", "lr": 1e-3})
        for step in range(3):
            tr.log_metrics({"loss": 10.0 - step, "lr": 1e-3}, step=step)
    assert _history(mlflow_server.url, tr.run_id, "loss") == [(0, 10.0), (1, 9.0), (2, 8.0)]
    from mlflow.tracking import MlflowClient

    assert MlflowClient(mlflow_server.url).get_run(tr.run_id).data.params["arch"] == "pluto_tiny"
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in lines if "loss" in r] == [10.0, 9.0, 8.0]


@pytest.mark.integration
@pytest.mark.slow  # starts its own MLflow server (~1 min on 2 cores)
def test_dead_server_never_blocks_and_metrics_arrive_once_it_is_back(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tr = MetricsTracker(tmp_path / "run", url, experiment="t-down", retry_min_s=0.2, retry_max_s=1.0)
    for step in range(5):
        tr.log_metrics({"loss": float(step)}, step=step)  # server down: returns at once
    assert tr.pending == 5 and tr.run_id is None
    svc = start_mlflow(tmp_path / "store", port=port)
    try:
        tr.log_metrics({"loss": 5.0}, step=5)
        deadline = time.monotonic() + 60
        while tr.pending and time.monotonic() < deadline:  # the sender retries on its own
            time.sleep(0.2)
        tr.close()
        assert tr.pending == 0 and not tr.down
        assert _history(url, tr.run_id, "loss") == [(s, float(s)) for s in range(6)]
        # a restarted process re-attaches to the same MLflow run through run_dir/mlflow_run_id
        with MetricsTracker(tmp_path / "run", url, experiment="t-down") as again:
            again.log_metrics({"loss": 6.0}, step=6)
        assert again.run_id == tr.run_id and _history(url, tr.run_id, "loss")[-1] == (6, 6.0)
    finally:
        svc.stop()


def test_close_does_not_wait_on_a_dead_server(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    tr = MetricsTracker(tmp_path, f"http://127.0.0.1:{free_port()}", retry_min_s=0.1)
    tr.log_metrics({"loss": 1.0}, step=1)
    deadline = time.monotonic() + 30
    while not tr.down and time.monotonic() < deadline:
        time.sleep(0.1)
    tr.close(timeout_s=120)  # returns without draining: the point stays in the JSONL record
    assert tr.down and tr.pending == 1
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["loss"] == 1.0


def test_without_uri_only_jsonl_is_written(tmp_path):
    with MetricsTracker(tmp_path) as tr:
        tr.log_metrics({"loss": 1.5}, step=0)
    assert tr.pending == 0 and tr.run_id is None
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["loss"] == 1.5
