"""Tracker: JSONL always, MLflow via a background sender that survives a dead server; nested runs."""

from __future__ import annotations

import json
import time

import pytest

from pluto.services import free_port, start_mlflow
from pluto.tracking import PARENT_TAG, Tracker


def _history(url: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(url).get_metric_history(run_id, key))


def _records(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.integration
def test_metrics_reach_real_mlflow_and_jsonl(tmp_path, mlflow_server):
    with Tracker(tmp_path / "run" / "metrics.jsonl", mlflow_server.url, experiment="t-train", run_name="ok") as tr:
        tr.log_params({"arch": "pluto_tiny", "lr": 1e-3})
        for step in range(3):
            tr.log_metrics({"loss": 10.0 - step, "lr": 1e-3}, step=step)
    assert _history(mlflow_server.url, tr.run_id, "loss") == [(0, 10.0), (1, 9.0), (2, 8.0)]
    from mlflow.tracking import MlflowClient

    run = MlflowClient(mlflow_server.url).get_run(tr.run_id)
    assert run.data.params["arch"] == "pluto_tiny" and run.info.status == "FINISHED"
    recs = _records(tmp_path / "run" / "metrics.jsonl")
    assert [r["loss"] for r in recs if "loss" in r] == [10.0, 9.0, 8.0]
    assert {"session": tr.session, "run_id": tr.run_id} in recs and recs[-1]["end"] == "FINISHED" and recs[-1]["unsent"] == 0


@pytest.mark.integration
def test_nested_run_with_tags_and_artifact_and_failed_status(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    url = mlflow_server.url
    report = tmp_path / "report.json"
    report.write_text('{"ok": true}')
    parent = Tracker(tmp_path / "parent.jsonl", url, "t-nested", "parent", connect_now=True)
    assert parent.run_id and f"/runs/{parent.run_id}?" in parent.url  # known on return: children need it
    with pytest.raises(RuntimeError), Tracker(tmp_path / "child.jsonl", url, "t-nested", "child", parent_run_id=parent.run_id,
                                              tags={"pluto.stage": "qc"}, connect_now=True) as child:
        child.set_tags({"pluto.cached": False})
        child.log_artifact(report, "reports")
        raise RuntimeError("stage failed")
    parent.close()
    client = MlflowClient(url)
    got = client.get_run(child.run_id)
    assert got.data.tags[PARENT_TAG] == parent.run_id and got.data.tags["pluto.stage"] == "qc"
    assert got.data.tags["pluto.cached"] == "False" and got.info.status == "FAILED"
    assert [a.path for a in client.list_artifacts(child.run_id, "reports")] == ["reports/report.json"]
    assert client.get_run(parent.run_id).info.status == "FINISHED"
    assert _records(tmp_path / "child.jsonl")[1]["tags"] == {"pluto.stage": "qc", PARENT_TAG: parent.run_id}


@pytest.mark.integration
def test_a_refused_param_change_on_resume_does_not_block_metrics(tmp_path, mlflow_server):
    run_dir = tmp_path / "run"
    kw = {"run_id_path": run_dir / "mlflow_run_id", "experiment": "t-resume"}
    with Tracker(run_dir / "metrics.jsonl", mlflow_server.url, **kw) as first:
        first.log_params({"world_size": 2})
        first.log_metrics({"loss": 1.0}, step=1)
    with Tracker(run_dir / "metrics.jsonl", mlflow_server.url, **kw) as again:
        again.log_params({"world_size": 1})  # MLflow params are immutable: the server answers 400
        again.log_metrics({"loss": 0.5}, step=2)
    assert again.run_id == first.run_id and again.pending == 0
    assert _history(mlflow_server.url, first.run_id, "loss") == [(1, 1.0), (2, 0.5)]
    # kept, not dropped: noted in the JSONL and counted unsent, so a sync looks at the run again (and sends nothing twice)
    recs = _records(run_dir / "metrics.jsonl")
    assert {"session": again.session, "refused": "params", "status": 400, "items": 1} in recs
    assert recs[-1]["session"] == again.session and recs[-1]["unsent"] == 1
    from pluto.tracking import sync_runs

    report = sync_runs([run_dir / "metrics.jsonl"], mlflow_server.url)
    assert (report.runs, report.metrics, report.params) == (1, 0, 0)


def test_messages_show_the_server_without_its_userinfo():
    from pluto.tracking import refusal, shown_uri

    assert shown_uri("https://alice:s3cret@mlflow.example.org:8443/x") == "https://mlflow.example.org:8443/x"
    assert shown_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    message = refusal("https://alice:s3cret@mlflow.example.org", 401)
    assert message.startswith("MLflow at https://mlflow.example.org refused the login (HTTP 401)") and "s3cret" not in message
    assert "refused this user the access it needs (HTTP 403)" in refusal("http://127.0.0.1:5000", 403)


@pytest.mark.integration
@pytest.mark.slow  # starts its own MLflow server (~1 min on 2 cores)
def test_dead_server_never_blocks_and_metrics_arrive_once_it_is_back(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    run_dir = tmp_path / "run"
    kw = {"experiment": "t-down", "run_id_path": run_dir / "mlflow_run_id"}
    tr = Tracker(run_dir / "metrics.jsonl", url, retry_min_s=0.2, retry_max_s=1.0, **kw)
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
        with Tracker(run_dir / "metrics.jsonl", url, **kw) as again:
            again.log_metrics({"loss": 6.0}, step=6)
        assert again.run_id == tr.run_id and _history(url, tr.run_id, "loss")[-1] == (6, 6.0)
    finally:
        svc.stop()


def test_close_does_not_wait_on_a_dead_server(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    tr = Tracker(tmp_path / "metrics.jsonl", f"http://127.0.0.1:{free_port()}", retry_min_s=0.1)
    tr.log_metrics({"loss": 1.0}, step=1)
    deadline = time.monotonic() + 30
    while not tr.down and time.monotonic() < deadline:
        time.sleep(0.1)
    tr.close(timeout_s=120)  # returns without draining: the point stays in the JSONL record
    assert tr.down and tr.pending == 1 and tr.url == ""
    assert [r["loss"] for r in _records(tmp_path / "metrics.jsonl") if "loss" in r] == [1.0]


def test_a_dead_server_at_start_leaves_a_complete_jsonl_record(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    path = tmp_path / "tracking" / "qc.jsonl"
    with Tracker(path, f"http://127.0.0.1:{free_port()}", "t", "qc", parent_run_id="p1", tags={"pluto.stage": "qc"},
                 connect_now=True) as tr:
        assert tr.down and tr.run_id is None
        tr.log_params({"batches": 2})
        tr.log_metrics({"slides_ok": 3.0})
        tr.log_artifact(tmp_path / "report.html")
    recs = _records(path)
    assert recs == [
        {"session": tr.session, "experiment": "t", "run_name": "qc", "mlflow": True, "run_id_path": None, "run_id": None,
         "t_ms": recs[0]["t_ms"]},
        {"tags": {"pluto.stage": "qc", PARENT_TAG: "p1"}},
        {"params": {"batches": "2"}},
        {"step": 0, "t_ms": recs[3]["t_ms"], "slides_ok": 3.0},
        {"artifact": str(tmp_path / "report.html"), "artifact_path": None},
        {"session": tr.session, "end": "FINISHED", "unsent": 5, "t_ms": recs[5]["t_ms"]},  # what `sync_runs` replays
    ]


def test_without_uri_only_jsonl_is_written(tmp_path):
    with Tracker(tmp_path / "metrics.jsonl") as tr:
        tr.log_metrics({"loss": 1.5}, step=0)
    assert tr.pending == 0 and tr.run_id is None
    recs = _records(tmp_path / "metrics.jsonl")
    assert [r["loss"] for r in recs if "loss" in r] == [1.5]
    assert recs[0]["mlflow"] is False and recs[-1]["end"] == "FINISHED"  # a session `sync_runs` leaves alone


def test_a_run_logged_where_mlflow_is_missing_is_replayed_later(tmp_path, mlflow_server, monkeypatch):
    import importlib.util

    from pluto.tracking import read_sessions, sync_runs

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real_find_spec(name, *a))
    path = tmp_path / "gpu-node" / "metrics.jsonl"
    with Tracker(path, mlflow_server.url, experiment="t-no-mlflow", run_name="node") as tr:
        tr.log_metrics({"loss": 2.0}, step=0)
        tr.log_metrics({"loss": 1.0}, step=1)
    monkeypatch.undo()
    (session,) = read_sessions(path)
    assert session.unsent is None and session.end == "FINISHED"  # nothing was sent: the sync must not skip it
    report = sync_runs([path], mlflow_server.url)
    assert (report.runs_created, report.metrics) == (1, 2)
    assert _history(mlflow_server.url, read_sessions(path)[0].run_id, "loss") == [(0, 2.0), (1, 1.0)]


def test_a_line_cut_short_is_skipped_not_fatal(tmp_path, caplog):
    from pluto.tracking import read_sessions

    path = tmp_path / "metrics.jsonl"
    header = {"session": "s1", "experiment": "e", "run_name": "r", "mlflow": True, "run_id_path": None, "run_id": None, "t_ms": 1}
    lines = [json.dumps(header), json.dumps({"step": 0, "t_ms": 2, "loss": 2.0}), '{"step": 1, "t_ms": 3, "lo',
             json.dumps({"step": 2, "t_ms": 4, "loss": 1.0})]
    path.write_text("\n".join(lines) + "\n")
    (session,) = read_sessions(path)
    assert session.points == [("loss", 2.0, 2, 0), ("loss", 1.0, 4, 2)]
    assert f"{path}:3: not a JSON record" in caplog.text
