"""The CLI's data hooks against a real MLflow server: `pluto register` keeps the work dir's data.dvc on
its run, a promotion points the DVC project's data.dvc at the champion's data and (opt-in) tags it in
git, and `pluto data checkout` restores a version's own data.dvc, refusing a version that has none."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from typer.testing import CliRunner

from pluto.cli import app
from pluto.data_git import commit_version, data_tag, model_tag
from pluto.data_version import commit_data, table_hash
from pluto.errors import PlutoError
from tests.chain.test_data_version import _tables
from tests.conftest import dvc_project_like_the_repository

pytestmark = pytest.mark.integration


def _suite(path):
    from pluto.eval.records import EvalRecord, SuiteResult

    rec = EvalRecord(task="crc", dataset="crc", split="test", metric="balanced_accuracy", values=(0.8, 0.81), seeds=(0, 1),
                     protocol="linear_probe/quick", model_id="m", patch_size=16, embedding_mode="cls")
    path.write_text(json.dumps(SuiteResult((rec,), 0.805).to_dict()))
    return path


def test_register_promote_and_checkout_follow_the_versions_own_data_dvc(mlflow_server, tiny_dirs, tmp_path):
    from mlflow.tracking import MlflowClient

    MlflowClient(mlflow_server.url).search_experiments()  # a just-started server answers its first calls slowly on a busy machine
    work, bare = tmp_path / "work", tmp_path / "data.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    project = dvc_project_like_the_repository(tmp_path / "project")
    store = (work / "stores" / "dvc").as_uri()
    _tables(work, ["2026-01-01", "2026-01-02"])
    v1 = commit_data(work, store)
    commit_version(work, v1.md5, str(bare))  # what the retrain does with chain.data_git on
    env = {"PLUTO_MLFLOW__TRACKING_URI": mlflow_server.url, "PLUTO_PATHS__WORK_DIR": str(work), "PLUTO_CHAIN__DVC_PROJECT": str(project),
           "PLUTO_CHAIN__DVC_REMOTE": store, "PLUTO_CHAIN__DATA_GIT": "true", "PLUTO_CHAIN__DATA_GIT_REMOTE": str(bare),
           "PLUTO_CHAIN__QUALITY_FLOOR": "false"}

    def cli(*args, ok=True, **extra):
        done = CliRunner().invoke(app, list(args), env={**env, **extra})
        assert (done.exit_code == 0) is ok, done.output[-3000:] + repr(done.exception)
        return done

    suite = _suite(tmp_path / "suite.json")
    registered = cli("register", str(tiny_dirs[0]), "--suite", str(suite)).stdout
    name, version = re.search(r"^(\S+) v(\d+): ", registered, re.M).groups()
    promoted = cli("promote", name, version, "--why", "data follows", "--force")
    assert f"data.dvc -> {v1.md5}" in promoted.stdout and f"git tag {model_tag(name, int(version))}" in promoted.stdout
    assert (project / "data.dvc").read_bytes() == (work / "data.dvc").read_bytes()
    tags = subprocess.run(["git", "ls-remote", "--tags", str(bare)], capture_output=True, text=True, check=True).stdout
    refs = dict(reversed(line.split("\t")) for line in tags.splitlines())
    assert refs[f"refs/tags/{model_tag(name, int(version))}"] == refs[f"refs/tags/{data_tag(v1.md5)}"]

    fresh = tmp_path / "fresh"
    checked = cli("data", "checkout", "--model-version", version, "--model", name, PLUTO_PATHS__WORK_DIR=str(fresh))
    assert v1.md5 in checked.stdout and (fresh / "data.dvc").read_bytes() == (work / "data.dvc").read_bytes()
    assert table_hash(fresh / "catalog.parquet") == table_hash(work / "data" / "catalog.parquet")

    # a version registered with a bare --data-hash: its run holds no data.dvc, so nothing can follow or be checked out
    other = cli("register", str(tiny_dirs[1]), "--suite", str(suite), "--data-hash", "e" * 32).stdout
    bare_version = re.search(r"^\S+ v(\d+): ", other, re.M).group(1)
    moved = cli("promote", name, bare_version, "--why", "no data.dvc", "--force")
    assert "logged no data.dvc" in moved.stderr and "still names the previous champion's data" in moved.stderr
    assert "without a git tag" in moved.stderr  # data eeee... was never versioned in git
    assert (project / "data.dvc").read_bytes() == (work / "data.dvc").read_bytes()
    refused = cli("data", "checkout", "--model-version", bare_version, "--model", name, ok=False, PLUTO_PATHS__WORK_DIR=str(tmp_path / "none"))
    assert isinstance(refused.exception, PlutoError) and "logged no data.dvc" in str(refused.exception)
    assert not (tmp_path / "none" / "data.dvc").exists()  # no made-up pointer
