"""A registered `models:/` URI resolves to the same encoder (real MLflow registry on a local sqlite store)."""

from __future__ import annotations

import pytest

from pluto.eval.embeddings import model_id, resolve_model


@pytest.mark.integration
def test_models_uri_resolves_to_the_saved_weights(fixed_tiny, tmp_path, monkeypatch):
    import mlflow

    from pluto.models import save_model

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    save_model(fixed_tiny, tmp_path / "encoder")
    mlflow.create_experiment("eval-uri-test", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment("eval-uri-test")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(tmp_path / "encoder"), artifact_path="model")
    client = mlflow.MlflowClient()
    client.create_registered_model("pluto-tiny-evaltest")
    client.create_model_version("pluto-tiny-evaltest", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    loaded = resolve_model("models:/pluto-tiny-evaltest/1")
    assert model_id(loaded) == model_id(fixed_tiny)
