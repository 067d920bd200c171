"""Registry against a real MLflow server: register (idempotent), gate, promote/rollback, load the champion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pluto.errors import PlutoError
from pluto.registry.checkpoint_store import CheckpointRef, download_checkpoint, upload_checkpoint
from pluto.registry.gate import SuiteScores
from pluto.registry.promotion import promote, read_log, rollback
from pluto.registry.register import download_model_dir, get_record, gate, register_model
from pluto.tracking import Tracker

pytestmark = pytest.mark.integration

GOOD = SuiteScores("1", 0.80, {"crc": 0.85, "mag": 0.75}, {"crc": 0.01, "mag": 0.02})
WORSE = SuiteScores("1", 0.70, {"crc": 0.80, "mag": 0.60}, {"crc": 0.01, "mag": 0.02})
BETTER = SuiteScores("1", 0.84, {"crc": 0.88, "mag": 0.80}, {"crc": 0.01, "mag": 0.02})


def _register(url, model_dir, scores, key, tmp_path, ckpt=None):
    with Tracker(tmp_path / f"register-{key}.jsonl", url, "chain-tests", f"register-{key}", connect_now=True) as run:
        return register_model(model_dir, tracking_uri=url, run_id=run.run_id, scores=scores, data_hash="d" * 32,
                              git_sha="abc", idempotency_key=key, checkpoint=ckpt)


@pytest.fixture(scope="module")
def registry_mlflow(tmp_path_factory):
    """Its own MLflow server: this story starts with no champion, which modules sharing the session server break."""
    from pluto.services import start_mlflow

    svc = start_mlflow(tmp_path_factory.mktemp("registry-mlflow"))
    yield svc
    svc.stop()


def test_register_gate_promote_rollback_and_serve_champion(registry_mlflow, tiny_dirs, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    url, log_path = registry_mlflow.url, tmp_path / "promotions.jsonl"
    v1 = _register(url, tiny_dirs[0], GOOD, "key-1", tmp_path)
    again = _register(url, tiny_dirs[0], GOOD, "key-1", tmp_path)
    assert again.version == v1.version  # retried registration: no duplicate version
    assert gate(url, v1.name, v1.version, min_margin=0.01, log_path=log_path, auto_promote=True).promote
    events = log_path.read_text().splitlines()
    regated = gate(url, v1.name, v1.version, min_margin=0.01, log_path=log_path, auto_promote=True)  # the champion, gated again
    assert regated.summary == f"v{v1.version} is already the champion; not re-gated" and "no champion" not in regated.summary
    assert log_path.read_text().splitlines() == events  # and no second promotion event

    v2 = _register(url, tiny_dirs[1], WORSE, "key-2", tmp_path)
    blocked = gate(url, v2.name, v2.version, min_margin=0.01, log_path=log_path, auto_promote=True)
    assert not blocked.promote and any("suite score" in r for r in blocked.reasons)
    client = MlflowClient(url)
    assert client.get_model_version_by_alias(v1.name, "champion").version == str(v1.version)
    assert client.get_model_version_by_alias(v1.name, "challenger").version == str(v2.version)
    assert json.loads(client.get_model_version(v1.name, str(v2.version)).tags["pluto.gate"])["promote"] is False

    v3 = _register(url, tiny_dirs[1], BETTER, "key-3", tmp_path)
    assert gate(url, v3.name, v3.version, min_margin=0.01, log_path=log_path, auto_promote=True).promote
    assert get_record(url, v3.name, alias="champion").version == v3.version

    back = rollback(url, v3.name, why="regression seen in serving", who="alice", log_path=log_path)
    assert (back.version, back.previous, back.who) == (v1.version, v3.version, "alice")
    tags = client.get_model_version(v1.name, str(v1.version)).tags
    assert tags["pluto.promoted_by"] == "alice" and tags["pluto.promoted_action"] == "rollback"
    events = read_log(client, v1.name)
    assert [(e.action, e.version) for e in events] == [("promote", v1.version), ("promote", v3.version), ("rollback", v1.version)]
    local = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [e["seq"] for e in local] == [1, 2, 3]  # the local mirror holds the same append-only events
    with pytest.raises(PlutoError, match="no earlier champion"):
        rollback(url, v1.name, why="again", log_path=log_path)
    promote(url, v1.name, v2.version, why="manual pick", who="bob", log_path=log_path)

    from pluto.models import read_config

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")  # the download must not use the default registry
    champ = download_model_dir(url, v1.name, tmp_path / "champion")  # what a retrain warm-starts from
    assert champ.is_relative_to(tmp_path / "champion" / f"v{v2.version}")
    assert read_config(champ)["weights_sha256"] == read_config(tiny_dirs[1])["weights_sha256"]
    assert download_model_dir(url, "pluto-4g", tmp_path / "champion") is None  # no champion yet

    mlflow.set_tracking_uri(url)
    model = mlflow.pyfunc.load_model(f"models:/{v1.name}@champion")
    shape = model.metadata.get_input_schema().inputs[0].shape
    assert shape[0] == -1 and tuple(shape[1:]) == (3, 112, 112)  # batch dimension left free
    batch = np.random.default_rng(0).standard_normal((3, 3, 112, 112)).astype(np.float32)
    emb = model.predict(batch)
    assert emb.shape == (3, 96) and np.isfinite(emb).all()
    rec = get_record(url, v1.name, alias="champion")
    assert rec.version == v2.version and rec.data_hash == "d" * 32 and rec.scores == WORSE



def test_checkpoint_multipart_upload_is_content_addressed(s3_buckets, tmp_path):
    endpoint, _, artifacts = s3_buckets
    ckpt = tmp_path / "ckpt-000000010.pt"
    ckpt.write_bytes(np.random.default_rng(0).bytes(12 * 1024 * 1024))  # > 2 parts of 5 MiB
    ref = upload_checkpoint(ckpt, f"s3://{artifacts}/ckpts", endpoint_url=endpoint, threshold_mb=5, chunk_mb=5)
    assert ref.uri.startswith(f"s3://{artifacts}/ckpts/{ref.sha256[:16]}/") and ref.bytes == ckpt.stat().st_size
    import boto3

    head = boto3.client("s3", endpoint_url=endpoint).head_object(Bucket=artifacts, Key=ref.uri.split("/", 3)[3])
    assert head["ETag"].strip('"').endswith("-3")  # multipart: 3 parts
    assert upload_checkpoint(ckpt, f"s3://{artifacts}/ckpts", endpoint_url=endpoint) == ref  # retry: same object
    got = download_checkpoint(CheckpointRef.from_dict(ref.to_dict()), tmp_path / "back.pt", endpoint_url=endpoint)
    assert got.read_bytes() == ckpt.read_bytes()


def test_served_model_needs_only_index_packages_and_carries_its_code(mlflow_server, tiny_dirs, tmp_path):
    """The model's requirements resolve from the package index (no `pluto-platform`); the code it imports
    travels in code/ (MLflow's code_paths); `mlflow models predict` serves it from the registry."""
    import os
    import subprocess
    import sys

    import mlflow

    rec = _register(mlflow_server.url, tiny_dirs[0], GOOD, "key-serve", tmp_path)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{rec.name}/{rec.version}", dst_path=str(tmp_path / "m"),
                                                     tracking_uri=mlflow_server.url))
    reqs = {line.split("==")[0] for line in (local / "requirements.txt").read_text().split() if "==" in line}
    assert reqs >= {"torch", "timm", "safetensors", "numpy"} and "pluto-platform" not in reqs
    code = local / "code" / "pluto"
    assert (code / "models" / "vision_transformer.py").is_file() and (code / "errors.py").is_file()
    assert not (code / "eval").exists()  # only what the embedder imports
    batch = np.random.default_rng(0).standard_normal((2, 3, 112, 112)).astype(np.float32)
    (tmp_path / "in.json").write_text(json.dumps({"inputs": batch.tolist()}))
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([str(Path(sys.executable).parent / "mlflow"), "models", "predict", "-m", f"models:/{rec.name}/{rec.version}",
                           "-i", str(tmp_path / "in.json"), "-t", "json", "-o", str(tmp_path / "out.json"), "--env-manager", "local"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    emb = np.asarray(json.loads((tmp_path / "out.json").read_text())["predictions"], dtype=np.float32)
    assert emb.shape == (2, 96) and np.isfinite(emb).all()
