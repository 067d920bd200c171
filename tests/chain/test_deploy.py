"""`prefect deploy --all` of prefect.yaml against a real Prefect server on 127.0.0.1, checked through its API.

The work pools and their `retrain` queues are created as the README gives them (the `deployed`
fixture, tests/chain/conftest.py); then the deployments must carry the weekly cron, the
new-slides event trigger, concurrency 1 that queues a colliding run, and settings parameters.
The sensor flow's event really starts a retrain run through the server's automation, and a failed
retrain leaves its slides new; the runs themselves, and a successful run marking its slides seen,
are run by a worker in tests/chain/test_worker.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


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
        assert d.global_concurrency_limit.limit == 1 and d.concurrency_options.collision_strategy.value == "ENQUEUE"
        assert d.work_queue_name == "retrain"  # the queue whose limit of 1 all retrain deployments of the pool share
        assert {"config", "seed", "launcher", "nproc"} <= set(d.parameter_openapi_schema["properties"])
        load_settings(**d.parameters["config"])  # the parameters resolve to valid settings
    assert weekly.parameters == {"config": {}, "launcher": "local", "nproc": 1} and weekly.work_pool_name == "pluto-local"
    assert weekly.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
    cluster = deps["cluster-weekly"]
    assert cluster.work_pool_name == "pluto-k8s" and cluster.parameters["launcher"] == "kubeflow"
    assert cluster.job_variables["env"]["PLUTO_CHAIN__DASK_ADDRESS"].startswith("tcp://")
    assert [s.active for s in cluster.schedules] == [False]
    assert deps["sensor"].schedules[0].schedule.interval.total_seconds() == 900
    assert deps["sensor"].work_queue_name == "default"  # polls while a retrain holds the retrain queue


def test_a_second_retrain_of_a_deployment_is_queued_not_cancelled(deployed):
    from prefect.states import Pending

    async def collide(client):
        d = await client.read_deployment_by_name("retrain/weekly")
        runs = [await client.create_flow_run_from_deployment(d.id) for _ in range(2)]
        results = [await client.set_flow_run_state(r.id, Pending()) for r in runs]
        for r in runs:  # leave no run holding the slot for the other tests
            await client.delete_flow_run(r.id)
        return results

    first, second = _call(collide)
    assert first.state.type.value == "PENDING"
    assert (second.state.type.value, second.state.name) == ("SCHEDULED", "AwaitingConcurrencySlot")  # waits, not cancelled


def test_weekly_and_on_new_slides_share_one_limited_queue_per_pool(deployed):
    async def queues(client):
        return {pool: await client.read_work_queue_by_name("retrain", work_pool_name=pool) for pool in ("pluto-local", "pluto-k8s")}

    assert {pool: q.concurrency_limit for pool, q in _call(queues).items()} == {"pluto-local": 1, "pluto-k8s": 1}


def test_new_slides_event_triggers_the_on_new_slides_deployment(deployed, tmp_path, shared_data):
    import shutil
    import time

    from prefect.client.schemas.filters import FlowRunFilter

    from prefect.variables import Variable

    from flows.sensor import EVENT, new_slides_sensor, seen_variable, waiting_retrains

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
    deadline = time.monotonic() + 60
    while not (runs := _call(triggered_runs)) and time.monotonic() < deadline:
        time.sleep(1)
    assert len(runs) == 1 and runs[0].created_by.type == "AUTOMATION"
    assert runs[0].parameters == {"config": {}, "launcher": "local", "nproc": 1}
    # no worker here, so the run waits: it will list the prefix when it starts, and no second event is sent
    assert waiting_retrains() == [str(runs[0].id)]
    assert new_slides_sensor(config) is False
    assert len(_call(triggered_runs)) == 1
    # the slides are seen only once a retrain covering them succeeds, not when the event went out
    assert Variable.get(seen_variable(str(tmp_path)), default=None) is None


def test_a_failed_retrain_leaves_its_slides_new_for_the_sensor(deployed, tmp_path, shared_data):
    import shutil

    from prefect.variables import Variable

    from flows.retrain import retrain
    from flows.sensor import seen_variable
    from pluto.errors import PlutoError

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(shared_data / "openslide_fixtures" / "unreadable.svs", src)  # QC has no slide to work on: the run fails
    config = {"paths": {"work_dir": str(tmp_path / "work")}, "mlflow": {"tracking_uri": ""},
              "chain": {"ingest_prefix": str(src), "dask_workers": 1, "task_retries": 0}}
    with pytest.raises(PlutoError):
        retrain(config)
    assert Variable.get(seen_variable(str(src)), default=None) is None
