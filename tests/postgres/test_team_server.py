"""The team MLflow server for real (PostgreSQL backend, S3 artifacts, basic auth), as the compose file
runs it: a retrain's registry story, a training job logging with the login from its secret, a wrong
password stopping a job at start, and items refused mid-run replayed once the login is fixed.
Passwords never reach a log, the JSONL record or the manifest."""

from __future__ import annotations

import json
import logging
import secrets
import shlex
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pluto.registry.promotion import rollback
from pluto.registry.register import download_model_dir, gate
from pluto.tracking import Tracker, TrackingAuthError
from tests.chain.test_registry import BETTER, GOOD, WORSE, _register
from tests.postgres.conftest import REPO, TEAM_USER
from tests.train.test_deploy_schemas import _crd_schema, _errors

pytestmark = [pytest.mark.postgres, pytest.mark.integration, pytest.mark.slow]  # slow: the session starts PostgreSQL + MLflow


def _server_args(argv: list[str]) -> dict[str, str | None]:
    """`mlflow server`'s options and their values (None for a bare flag)."""
    args: dict[str, str | None] = {}
    last = ""
    for token in argv[argv.index("server") + 1:]:
        if token.startswith("--"):
            args[token], last = None, token
        else:
            args[last] = token
    return args


def _compose_mlflow() -> tuple[dict, list[str], list[str]]:
    """The compose file's mlflow service, its `mlflow server` argv and its `pip install` argv."""
    svc = yaml.safe_load((REPO / "mlflow" / "docker-compose.yml").read_text())["services"]["mlflow"]
    shell, flag, script = shlex.split(svc["command"])
    assert (shell, flag) == ("sh", "-c")
    steps = [shlex.split(step) for step in script.split("&&")]
    (server,) = [s for s in steps if s[:2] == ["mlflow", "server"]]
    (pip,) = [s for s in steps if s[:2] == ["pip", "install"]]
    return svc, server, pip


def _locked() -> dict[str, str]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    return {name.lower(): version for name, _, version in (x.partition("==") for x in lines if "==" in x)}


def _never_written(team, tmp_path: Path, caplog, *passwords: str) -> None:
    """None of `passwords` in the captured logs, the files under tmp_path (JSONL records, manifests) or the server's log."""
    texts = {"logs": caplog.text, "server log": team.service.log_path.read_text(errors="replace")}
    texts.update({str(p): p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file() and p.stat().st_size < 50_000_000})
    for pw in passwords:
        assert len(pw) >= 8
        leaks = [where for where, text in texts.items() if pw in text]
        assert leaks == [], f"a password was written to {leaks}"


def test_the_server_runs_with_the_compose_files_arguments(team_mlflow):
    svc, compose_argv, pip = _compose_mlflow()
    ours, theirs = _server_args(team_mlflow.service.proc.args), _server_args(compose_argv)
    assert set(ours) - set(theirs) == {"--workers"} and set(theirs) <= set(ours)  # one worker: 2 shared cores
    assert ours["--app-name"] == theirs["--app-name"] == "basic-auth" and ours["--serve-artifacts"] is theirs["--serve-artifacts"] is None
    for option, scheme in (("--backend-store-uri", "postgresql://"), ("--artifacts-destination", "s3://")):
        assert ours[option].startswith(scheme) and theirs[option].startswith(scheme)
    assert set(team_mlflow.env) == set(svc["environment"])  # the same variables: S3, auth config, admin password, Flask key
    locked = _locked()  # the image's additions pinned as the lock pins them, the image as the lock's mlflow
    assert {n.lower(): v for n, _, v in (x.partition("==") for x in pip if "==" in x)} == {
        n: locked[n] for n in ("psycopg2-binary", "flask-wtf", "boto3")}
    assert svc["image"].endswith(f":v{locked['mlflow']}")
    # what the server stores lands in PostgreSQL (migrated by the server itself)
    assert team_mlflow.query("select version()")[0][0].startswith("PostgreSQL")
    assert team_mlflow.query("select count(*) from alembic_version")[0][0] == 1


def test_a_retrain_registers_gates_promotes_and_rolls_back_on_the_team_server(team_mlflow, team_login, tiny_dirs, tmp_path):
    import boto3

    from pluto.models import read_config

    url, log_path = team_mlflow.url, tmp_path / "promotions.jsonl"
    v1 = _register(url, tiny_dirs[0], GOOD, "team-1", tmp_path)
    assert gate(url, v1.name, v1.version, min_margin=0.01, log_path=log_path, auto_promote=True).promote
    v2 = _register(url, tiny_dirs[1], WORSE, "team-2", tmp_path)
    blocked = gate(url, v2.name, v2.version, min_margin=0.01, log_path=log_path, auto_promote=True)
    assert not blocked.promote and any("suite score" in r for r in blocked.reasons)
    v3 = _register(url, tiny_dirs[1], BETTER, "team-3", tmp_path)
    assert gate(url, v3.name, v3.version, min_margin=0.01, log_path=log_path, auto_promote=True).promote
    back = rollback(url, v3.name, why="regression seen in serving", who="ci", log_path=log_path)
    assert (back.version, back.previous) == (v1.version, v3.version)

    # the registry lives in PostgreSQL, written by the non-admin team account
    name = v1.name
    assert team_mlflow.query(f"select alias, version from registered_model_aliases where name = '{name}' order by alias") == [
        ("challenger", v3.version), ("champion", v1.version)]
    assert team_mlflow.query(f"select version from model_versions where name = '{name}' order by version") == [
        (v1.version,), (v2.version,), (v3.version,)]
    with team_mlflow.as_admin() as auth:
        assert not auth.get_user(TEAM_USER).is_admin
    # the weights went through the server to S3 and come back unchanged (the client holds no S3 credentials)
    s3 = boto3.client("s3", endpoint_url=team_mlflow.s3_endpoint, region_name="us-east-1",
                      aws_access_key_id=team_mlflow.env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=team_mlflow.env["AWS_SECRET_ACCESS_KEY"])
    bucket = team_mlflow.artifacts_destination.split("/")[2]
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket) for o in page.get("Contents", [])]
    assert sum(k.startswith("artifacts/") and k.endswith("model.safetensors") for k in keys) >= 3
    champion = download_model_dir(url, name, tmp_path / "champion")
    assert read_config(champion)["weights_sha256"] == read_config(tiny_dirs[0])["weights_sha256"]


def test_a_training_job_logs_its_metrics_with_the_login_from_its_kubernetes_secret(team_mlflow, tiles_manifest, tiny_config, tmp_path,
                                                                                    monkeypatch, caplog):
    from mlflow.tracking import MlflowClient

    from pluto.train.launch import render_pytorchjob
    from pluto.train.trainer import train

    caplog.set_level(logging.DEBUG)
    cfg = tiny_config(tmp_path / "run", tiles_manifest, steps=2, ckpt_every=2, tracking_uri=team_mlflow.url, experiment="t-team-train")
    cfg = replace(cfg, cluster=replace(cfg.cluster, mlflow_secret="pluto-mlflow"))
    manifest = tmp_path / "pytorchjob.yaml"
    manifest.write_text(render_pytorchjob(cfg, f"{cfg.run_dir}/train_config.json"))
    doc = yaml.safe_load(manifest.read_text())
    assert _errors(_crd_schema(), doc) == []
    (container,) = doc["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    # `kubectl create secret generic pluto-mlflow --from-literal=MLFLOW_TRACKING_USERNAME=... --from-literal=MLFLOW_TRACKING_PASSWORD=...`
    cluster_secrets = {"pluto-mlflow": {"MLFLOW_TRACKING_USERNAME": TEAM_USER, "MLFLOW_TRACKING_PASSWORD": team_mlflow.user_password}}
    for ref in container["envFrom"]:  # the pod's environment, as the kubelet builds it from the references
        for key, value in cluster_secrets[ref["secretRef"]["name"]].items():
            monkeypatch.setenv(key, value)

    result = train(cfg)
    run_id = (tmp_path / "run" / "mlflow_run_id").read_text().strip()
    client = MlflowClient(team_mlflow.url)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["world_size"] == "1"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(h["step"], h["loss"]) for h in result.history]
    assert [h["step"] for h in result.history] == [1, 2]
    assert team_mlflow.query(f"select count(*) from metrics where run_uuid = '{run_id}' and key = 'loss'") == [(2,)]
    _never_written(team_mlflow, tmp_path, caplog, team_mlflow.user_password, team_mlflow.env["MLFLOW_AUTH_ADMIN_PASSWORD"])


def test_a_wrong_password_stops_a_job_at_start_naming_the_server_not_the_password(team_mlflow, tiles_manifest, tiny_config, tmp_path,
                                                                                  monkeypatch, caplog):
    from pluto.train.checkpoint import list_checkpoints
    from pluto.train.trainer import train

    caplog.set_level(logging.DEBUG)
    wrong = f"wrong-{secrets.token_urlsafe(12)}"
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", TEAM_USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", wrong)
    cfg = tiny_config(tmp_path / "run", tiles_manifest, steps=2, tracking_uri=team_mlflow.url, experiment="t-team-wrong")
    started = time.monotonic()
    with pytest.raises(TrackingAuthError) as refused:
        train(cfg)
    assert time.monotonic() - started < 60  # at start: no retries, no training
    message = str(refused.value)
    assert message.startswith(f"MLflow at {team_mlflow.url} refused the login (HTTP 401)")
    assert "MLFLOW_TRACKING_USERNAME" in message and "MLFLOW_TRACKING_PASSWORD" in message and wrong not in message
    assert list_checkpoints(tmp_path / "run" / "checkpoints") == [] and not (tmp_path / "run" / "mlflow_run_id").exists()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # no session a later sync would turn into an empty run
    _never_written(team_mlflow, tmp_path, caplog, wrong, team_mlflow.user_password)


def test_items_refused_after_a_password_change_are_kept_and_replayed_once_the_login_is_fixed(team_mlflow, tmp_path, monkeypatch, caplog):
    from mlflow.tracking import MlflowClient

    from pluto.cli import app

    caplog.set_level(logging.DEBUG)
    user, old, new = f"rotating-{secrets.token_hex(3)}", secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    with team_mlflow.as_admin() as auth:
        auth.create_user(user, old)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", old)
    path = tmp_path / "run" / "metrics.jsonl"
    tr = Tracker(path, team_mlflow.url, "t-team-rotation", "rotation", connect_now=True, retry_min_s=0.1, retry_max_s=0.5)
    tr.log_metrics({"loss": 3.0}, step=0)
    deadline = time.monotonic() + 30
    while tr.pending and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tr.pending == 0 and tr.run_id
    with team_mlflow.as_admin() as auth:  # the password is changed mid-run (the tracker is idle meanwhile)
        auth.update_user_password(user, new)
    tr.log_params({"batch": 4})
    tr.log_metrics({"loss": 2.0}, step=1)
    tr.log_metrics({"loss": 1.0}, step=2)
    while tr.refused is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tr.refused == 401 and tr.pending == 3  # kept, not dropped
    started = time.monotonic()
    tr.close()
    assert time.monotonic() - started < 5  # a refused login is not waited on
    end = json.loads(path.read_text().splitlines()[-1])
    assert (end["end"], end["unsent"]) == ("FINISHED", 3)
    assert f"MLflow at {team_mlflow.url} refused the login (HTTP 401)" in caplog.text
    loss_steps = f"select step from metrics where run_uuid = '{tr.run_id}' and key = 'loss' order by step"
    assert team_mlflow.query(loss_steps) == [(0,)]  # what the server had taken (read from PostgreSQL: no login here)

    monkeypatch.setenv("PLUTO_MLFLOW__TRACKING_URI", team_mlflow.url)  # the team's server, as its README section sets it
    runner = CliRunner()
    still_old = runner.invoke(app, ["tracking", "sync", str(path)])  # not fixed yet: refused before anything is sent
    assert isinstance(still_old.exception, TrackingAuthError) and old not in str(still_old.exception)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", new)  # fixed
    synced = runner.invoke(app, ["tracking", "sync", str(path)])
    assert synced.exit_code == 0, synced.output
    assert "sent 2 metric points, 1 params" in synced.output and "1 runs ended" in synced.output
    client = MlflowClient(team_mlflow.url)
    run = client.get_run(tr.run_id)
    assert sorted((m.step, m.value) for m in client.get_metric_history(tr.run_id, "loss")) == [(0, 3.0), (1, 2.0), (2, 1.0)]
    assert run.data.params == {"batch": "4"} and run.info.status == "FINISHED"
    again = runner.invoke(app, ["tracking", "sync", str(path)])
    assert "sent 0 metric points, 0 params" in again.output  # exactly once
    _never_written(team_mlflow, tmp_path, caplog, old, new, team_mlflow.env["MLFLOW_AUTH_ADMIN_PASSWORD"])
    assert not any(pw in r.output for r in (still_old, synced, again) for pw in (old, new))
