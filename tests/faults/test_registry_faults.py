"""Registration faults (issue 8): MLflow down before and during registration, against a real server.

A failed registration is one clear PlutoError, is safe to retry, and the retries together create
exactly one model version, even when the first attempt died after creating it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pluto.registry.gate import SuiteScores
from pluto.registry.register import TAG_KEY, RegistryUnavailable, register_model
from pluto.services import free_port, start_mlflow
from pluto.tracking import Tracker

SCORES = SuiteScores("1", 0.8, {"crc": 0.8}, {"crc": 0.01})


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    import timm
    import torch

    import pluto.models  # noqa: F401 - registers the archs
    from pluto.models import save_model

    torch.manual_seed(0)
    return save_model(timm.create_model("pluto_tiny"), tmp_path_factory.mktemp("tiny"))


@pytest.mark.integration
@pytest.mark.slow  # starts an MLflow server three times (~1 min each on 2 cores)
def test_registration_during_outages_is_clean_retryable_and_never_duplicates(tmp_path, tiny_dir, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail within seconds, not MLflow's ~4 min of retries
    store, port = tmp_path / "store", free_port()
    server = start_mlflow(store, port=port)
    url = server.url
    with Tracker(tmp_path / "run.jsonl", url, "faults-registry", "register", connect_now=True) as run:
        run_id = run.run_id

    def register():
        return register_model(tiny_dir, tracking_uri=url, run_id=run_id, scores=SCORES, data_hash="d" * 32,
                              git_sha="abc", idempotency_key="key-1")

    try:
        server.stop()  # 1. down before the attempt: refused at once, nothing created
        with pytest.raises(RegistryUnavailable, match=f"MLflow at {url} unreachable.*key key-1.*retry"):
            register()
        server = start_mlflow(store, port=port)

        # 2. the server dies after the version exists, before it gets its alias
        real_alias = MlflowClient.set_registered_model_alias

        def die_first(self, *args, **kwargs):
            server.stop()
            monkeypatch.setattr(MlflowClient, "set_registered_model_alias", real_alias)
            return real_alias(self, *args, **kwargs)

        monkeypatch.setattr(MlflowClient, "set_registered_model_alias", die_first)
        with pytest.raises(RegistryUnavailable) as err:
            register()
        assert "Traceback" not in str(err.value) and len(str(err.value)) < 600
        server = start_mlflow(store, port=port)

        client = MlflowClient(url)
        (half,) = client.search_model_versions("name = 'pluto-tiny'")
        assert half.tags[TAG_KEY] == "key-1"
        assert not client.get_registered_model("pluto-tiny").aliases  # the first attempt stopped short of the alias

        rec = register()  # 3. the retry finishes that version instead of creating another
        assert rec.version == int(half.version)
        assert register().version == rec.version
        versions = client.search_model_versions("name = 'pluto-tiny'")
        assert [v.version for v in versions] == [half.version]
        assert client.get_model_version_by_alias("pluto-tiny", "challenger").version == half.version
    finally:
        server.stop()


def test_cli_register_with_mlflow_down_prints_one_error_line(tmp_path, tiny_dir):
    from pluto.eval.records import EvalRecord, SuiteResult

    suite = tmp_path / "suite.json"
    rec = EvalRecord(task="crc", dataset="crc", split="test", metric="balanced_accuracy", values=(0.8, 0.81), seeds=(0, 1),
                     protocol="linear_probe/quick", model_id="m", patch_size=16, embedding_mode="cls")
    suite.write_text(json.dumps(SuiteResult((rec,), 0.805).to_dict()))
    url = f"http://127.0.0.1:{free_port()}"
    env = {"PLUTO_MLFLOW__TRACKING_URI": url, "PLUTO_PATHS__WORK_DIR": str(tmp_path / "work")}  # MLflow's default retries
    out = subprocess.run([sys.executable, "-m", "pluto.cli", "register", str(tiny_dir), "--suite", str(suite),
                          "--data-hash", "d" * 32], capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    text = out.stdout + out.stderr
    assert out.returncode == 2, text[-3000:]
    assert f"MLflow at {url} unreachable" in text and "retry" in text
    assert "Traceback" not in text
