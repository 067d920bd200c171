"""A retrain killed mid-flow (kill -9 of the flow process during pretraining) and rerun.

The rerun takes ingest/QC/tiling from the Prefect cache (keys: input data hash + config hash),
re-attaches to the training job the killed run launched instead of starting another, and ends
with a registered model; the stage outputs the killed run wrote are untouched. See chain_story.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import chain_story

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def story(request, tmp_path_factory, shared_data, moto_server) -> chain_story.Story:
    return chain_story.story(request, tmp_path_factory, shared_data, moto_server.url)


def test_rerun_after_kill_takes_data_stages_from_cache_and_keeps_their_outputs(story):
    assert story.a_returncode == -9  # SIGKILL while it waited on its training job
    stages = story.c["stages"]
    assert all(stages[k]["cached"] for k in ("ingest", "qc", "tile"))
    assert story.c["data"]["md5"] == story.a_data_md5  # the data version the killed run committed
    assert story.hashes["C"] == story.hashes["A"]  # catalog, QC tables and manifest as the killed run left them
    assert stages["register"]["record"]["version"] == 1 and stages["register"]["decision"]["promote"]


def test_rerun_reattaches_to_the_running_training_job_instead_of_launching_another(story):
    pretrain = story.c["stages"]["pretrain"]
    assert pretrain["job_id"] == story.job_id and pretrain["state"] == "succeeded" and not pretrain["cached"]
    assert story.job_id in story.reattach_log
    launch_dir = Path(story.job_id).parent
    assert Path(story.job_id).read_text() == story.job_state_before_kill  # same torchrun agent: no second submit
    assert [p.name for p in launch_dir.glob("*.json")] == [Path(story.job_id).name]
    (agent,) = json.loads(story.job_state_before_kill)["agents"]
    assert Path(agent["rc_file"]).read_text().strip() == "0"
    assert (Path(pretrain["model_dir"]) / "model.safetensors").is_file()
