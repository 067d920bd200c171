"""`prefect deploy --all` of prefect.yaml against a real Prefect server on 127.0.0.1, checked through its API.

The work pools are created from the same definitions the README gives (process pool, Kubernetes
pool from deploy/prefect/k8s-work-pool.json); then the deployments must carry the weekly cron, the
new-slides event trigger, concurrency 1 that cancels a colliding run, and settings parameters.
The sensor flow's event really starts a retrain run through the server's automation.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A Prefect server with the two work pools and every deployment of prefect.yaml; yields its API URL."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pluto.services import start_prefect

    svc = start_prefect(tmp_path_factory.mktemp("prefect-home"))
    api = f"{svc.url}/api"

    async def pools(client):
        await client.create_work_pool(WorkPoolCreate(name="pluto-local", type="process"))
        template = json.loads((REPO / "deploy" / "prefect" / "k8s-work-pool.json").read_text())
        await client.create_work_pool(WorkPoolCreate(name="pluto-k8s", type="kubernetes", base_job_template=template))

    try:
        with temporary_settings(updates={PREFECT_API_URL: api}):
            _call(pools)
        env = {**os.environ, "PREFECT_API_URL": api}
        out = subprocess.run([str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deploy", "--all"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        with temporary_settings(updates={PREFECT_API_URL: api}):
            yield api
            APILogWorker.drain_all(timeout=5)  # the sensor's flow-run logs, before the server goes
    finally:
        svc.stop()


def _call(fn):
    """Run `fn(client)` (async) against the current PREFECT_API_URL."""
    from prefect.client.orchestration import get_client

    async def main():
        async with get_client() as client:
            return await fn(client)

    return asyncio.run(main())


def test_deployments_carry_schedule_concurrency_parameters_and_pool(deployed):
    from pluto.config import load_settings

    async def read(client):
        return {d.name: d for d in await client.read_deployments()}

    deps = _call(read)
    assert set(deps) == {"weekly", "on-new-slides", "sensor", "cluster-weekly"}
    weekly = deps["weekly"]
    (sched,) = weekly.schedules
    assert (sched.schedule.cron, sched.schedule.timezone, sched.active) == ("0 3 * * 1", "UTC", True)
    assert not deps["on-new-slides"].schedules  # started by its event trigger only
    for name in ("weekly", "on-new-slides", "cluster-weekly"):
        d = deps[name]
        assert d.entrypoint == "flows/retrain.py:retrain"
        assert d.global_concurrency_limit.limit == 1 and d.concurrency_options.collision_strategy.value == "CANCEL_NEW"
        assert {"config", "seed", "launcher", "nproc"} <= set(d.parameter_openapi_schema["properties"])
        load_settings(**d.parameters["config"])  # the parameters resolve to valid settings
    assert weekly.parameters == {"config": {}, "launcher": "local", "nproc": 1} and weekly.work_pool_name == "pluto-local"
    assert weekly.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
    cluster = deps["cluster-weekly"]
    assert cluster.work_pool_name == "pluto-k8s" and cluster.parameters["launcher"] == "kubeflow"
    assert cluster.job_variables["env"]["PLUTO_CHAIN__DASK_ADDRESS"].startswith("tcp://")
    assert [s.active for s in cluster.schedules] == [False]
    assert deps["sensor"].schedules[0].schedule.interval.total_seconds() == 900


def test_a_second_retrain_of_a_deployment_is_cancelled_not_queued(deployed):
    from prefect.states import Pending

    async def collide(client):
        d = await client.read_deployment_by_name("retrain/weekly")
        runs = [await client.create_flow_run_from_deployment(d.id) for _ in range(2)]
        return [await client.set_flow_run_state(r.id, Pending()) for r in runs]

    first, second = _call(collide)
    assert first.state.type.value == "PENDING"
    assert second.state.type.value == "CANCELLED" and "concurrency limit" in second.details.reason


def test_new_slides_event_triggers_the_on_new_slides_deployment(deployed, tmp_path, shared_data):
    import shutil
    import time

    from prefect.client.schemas.filters import FlowRunFilter

    from flows.sensor import EVENT, new_slides_sensor

    async def automations(client):
        return await client.read_automations()

    (auto,) = _call(automations)
    assert auto.trigger.expect == {EVENT} and auto.trigger.match.root == {"prefect.resource.id": "pluto.ingest.*"}

    async def triggered_runs(client):
        d = await client.read_deployment_by_name("retrain/on-new-slides")
        assert auto.actions[0].deployment_id == d.id
        return await client.read_flow_runs(flow_run_filter=FlowRunFilter(deployment_id={"any_": [d.id]}))

    shutil.copy(shared_data / "openslide_fixtures" / "small.svs", tmp_path)
    config = {"chain": {"ingest_prefix": str(tmp_path)}}
    assert new_slides_sensor(config) is True
    assert new_slides_sensor(config) is False  # unchanged listing: no second event
    deadline = time.monotonic() + 60
    while not (runs := _call(triggered_runs)) and time.monotonic() < deadline:
        time.sleep(1)
    assert len(runs) == 1 and runs[0].created_by.type == "AUTOMATION"
    assert runs[0].parameters == {"config": {}, "launcher": "local", "nproc": 1}
