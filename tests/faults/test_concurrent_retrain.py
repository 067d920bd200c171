"""Two retrains on the same work dir and data at once: the second fails at once, clearly; nothing interleaves.

`retrain` holds an flock on `<work_dir>/.retrain.lock` for its whole run (flows.common.work_dir_lock),
so run B, started while run A is in pretraining, raises before touching any table or MLflow; after
A is killed (the kernel drops its lock) the rerun gets in and the registry ends with one version.
See chain_story for the sequence.
"""

from __future__ import annotations

import pytest

import chain_story

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def story(request, tmp_path_factory, shared_data, moto_server) -> chain_story.Story:
    return chain_story.story(request, tmp_path_factory, shared_data, moto_server.url)


def test_second_retrain_fails_clearly_and_leaves_the_tables_alone(story):
    assert "work dir in use by another retrain" in story.b_error and str(story.work / ".retrain.lock") in story.b_error
    assert '"pid"' in story.b_error  # names the holder
    assert story.hashes["B"] == story.hashes["A"]


def test_second_retrain_is_a_failed_flow_run_and_leaves_no_mlflow_run(story):
    import asyncio

    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def failed_retrains():
        async with get_client() as client:
            return await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["retrain"])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["FAILED"]))),
            )

    with temporary_settings(updates={PREFECT_API_URL: story.prefect_api}):
        (failed,) = asyncio.run(failed_retrains())
    assert "work dir in use by another retrain" in failed.state.message
    client = MlflowClient(story.mlflow_url)
    exp = client.get_experiment_by_name(story.config["mlflow"]["experiment"])
    parents = client.search_runs([exp.experiment_id], "tags.`pluto.flow` = 'retrain'")
    assert len(parents) == 2  # A (killed; C marks it KILLED when it takes the lock) and C; B never started one
    assert sorted(r.info.status for r in parents) == ["FINISHED", "KILLED"]


def test_registry_ends_with_one_consistent_version(story):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(story.mlflow_url)
    (found,) = client.search_model_versions("name = 'pluto-tiny'")
    version = client.get_model_version("pluto-tiny", found.version)  # search results carry no aliases
    record = story.c["stages"]["register"]["record"]
    assert int(version.version) == record["version"] == 1 and "champion" in version.aliases
    assert version.tags["pluto.data_hash"] == story.c["data"]["md5"]
    log = (story.work / "registry" / "promotions.jsonl").read_text().splitlines()
    assert len(log) == 1


def test_a_work_dir_that_cannot_be_locked_is_a_clear_error_and_leaks_no_handle(tmp_path, monkeypatch):
    import errno
    import fcntl
    import os

    from flows.common import work_dir_lock
    from pluto.errors import PlutoError

    def no_locks(fh, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(PlutoError, match=r"\.retrain\.lock: cannot lock the work dir .*local disk"):
        with work_dir_lock(tmp_path, "test"):
            pass
    assert len(os.listdir("/proc/self/fd")) == fds
