"""A retrain killed with SIGKILL leaves its Prefect flow run and MLflow parent run RUNNING; its successor ends them.

The work-dir lock (flows.common.work_dir_lock) holds the holder's flow run and MLflow run ids while it
runs and is emptied on a clean exit, so a record found on acquisition is a dead holder's. The
successor marks that MLflow run and its still-RUNNING stage runs KILLED and the flow run Crashed.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

import chain_story
from flows.common import crash_flow_run, end_dead_holder_runs, work_dir_lock
from pluto.services import free_port

pytestmark = pytest.mark.integration

DEAD_HOLDER = """
import os, sys
from flows.common import work_dir_lock
with work_dir_lock(sys.argv[1], "flow run " + sys.argv[2], flow_run_id=sys.argv[2]) as lock:
    lock.record(mlflow_run_id=sys.argv[3])
    os.kill(os.getpid(), 9)
"""


def _run_tree(url: str) -> dict[str, str]:
    """A retrain-like MLflow tree left RUNNING: parent, stage runs (one finished), a training grandchild, a bystander."""
    from mlflow.tracking import MlflowClient

    from pluto.tracking import PARENT_TAG

    client = MlflowClient(url)
    exp = client.create_experiment("faults-stale")
    ids = {"retrain": client.create_run(exp, run_name="retrain").info.run_id}
    for name, parent in (("ingest", "retrain"), ("pretrain", "retrain"), ("train", "pretrain")):
        ids[name] = client.create_run(exp, run_name=name, tags={PARENT_TAG: ids[parent]}).info.run_id
    ids["other"] = client.create_run(exp, run_name="other retrain").info.run_id
    client.set_terminated(ids["ingest"], "FINISHED")
    return ids


def test_successor_marks_the_dead_holders_mlflow_runs_killed_and_its_flow_run_crashed(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Completed, Running
    from prefect.testing.utilities import prefect_test_harness

    @flow(name="retrain-killed")
    def killed_flow() -> None:
        return None

    ids = _run_tree(mlflow_server.url)
    work = tmp_path / "work"
    with prefect_test_harness(server_startup_timeout=240):
        with get_client(sync_client=True) as client:
            dead = str(client.create_flow_run(killed_flow, state=Running()).id)
            done = client.create_flow_run(killed_flow, state=Completed()).id
        proc = subprocess.run([sys.executable, "-c", DEAD_HOLDER, str(work), dead, ids["retrain"]], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == -9, proc.stderr
        with work_dir_lock(work, "flow run next", flow_run_id="next") as lock:
            assert lock.previous["holder"] == f"flow run {dead}" and lock.previous["mlflow_run_id"] == ids["retrain"]
            assert lock.previous["flow_run_id"] == dead and lock.previous["pid"] != os.getpid()
            end_dead_holder_runs(lock.previous, mlflow_server.url, "flow run next")
        assert not crash_flow_run(str(done), "must not apply")  # only a Running flow run is crashed
        with get_client(sync_client=True) as client:
            crashed, completed = client.read_flow_run(dead).state, client.read_flow_run(done).state
    assert crashed.is_crashed() and "found by flow run next" in crashed.message and dead in crashed.message
    assert completed.is_completed()
    client = MlflowClient(mlflow_server.url)
    status = {name: client.get_run(run_id).info.status for name, run_id in ids.items()}
    assert status == {"retrain": "KILLED", "ingest": "FINISHED", "pretrain": "KILLED", "train": "RUNNING", "other": "RUNNING"}
    assert "found by flow run next" in client.get_run(ids["pretrain"]).data.tags["pluto.terminated_by"]
    assert (work / ".retrain.lock").read_text() == ""  # a clean exit leaves no record behind
    with work_dir_lock(work, "flow run after") as lock:
        assert lock.previous == {}


def test_unreachable_mlflow_is_logged_and_does_not_block(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    dead = f"http://127.0.0.1:{free_port()}"
    with caplog.at_level(logging.WARNING, logger="flows.common"):
        end_dead_holder_runs({"holder": "flow run a", "mlflow_run_id": "r1"}, dead, "flow run b")
    assert "could not mark MLflow run r1 KILLED" in caplog.text and dead in caplog.text


@pytest.fixture(scope="module")
def story(request, tmp_path_factory, shared_data, moto_server) -> chain_story.Story:
    return chain_story.story(request, tmp_path_factory, shared_data, moto_server.url)


@pytest.mark.slow
def test_the_killed_retrain_of_the_story_ends_killed_and_crashed(story):
    import asyncio

    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    client = MlflowClient(story.mlflow_url)
    exp = client.get_experiment_by_name(story.config["mlflow"]["experiment"])
    c_run = story.c["mlflow_run_id"]
    (a_run,) = [r for r in client.search_runs([exp.experiment_id], "tags.`pluto.flow` = 'retrain'") if r.info.run_id != c_run]
    assert a_run.info.status == "KILLED" and c_run in a_run.data.tags["pluto.terminated_by"]
    stages = {r.data.tags["pluto.stage"]: r.info.status
              for r in client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{a_run.info.run_id}'")}
    assert stages["pretrain"] == "KILLED" and stages["ingest"] == "FINISHED"  # A died waiting on its training job

    async def retrains():
        async with get_client() as prefect:
            return await prefect.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["retrain"])))

    with temporary_settings(updates={PREFECT_API_URL: story.prefect_api}):
        states = sorted((r.state.type.value, r.state.message or "") for r in asyncio.run(retrains()))
    assert [t for t, _ in states] == ["COMPLETED", "CRASHED", "FAILED"]  # C, A, B (B met A's lock)
    assert c_run in states[1][1]
