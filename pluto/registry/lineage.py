"""What a model version says about itself in MLflow, the way MLflow's users read it.

A registered version's source run is the `retrain` run that produced it, so the MLflow UI's
compare view of two versions shows their evaluation metrics (per task and embedding mode, the
suite score, the baselines) and key training parameters side by side, the runs table fills its
Dataset column (the DVC data version as a dataset input: digest = the DVC md5, source = data.dvc)
and its Models column (the logged pyfunc model), and the git commit sits under MLflow's standard
tag. The experiment is marked as model development so the UI opens on runs, not on GenAI traces.
MLflow is imported lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_DEVELOPMENT = "custom_model_development"  # the MLflow UI's "Machine learning" experiment type
GIT_COMMIT_TAG = "mlflow.source.git.commit"
DATASET_NAME = "pluto-data"


def mark_model_development(client: Any, experiment_id: str) -> None:
    """Tag the experiment so the MLflow UI shows the runs table (training runs), not the GenAI overview."""
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT)


def log_data_version(tracking_uri: str, run_id: str, md5: str, dvc_file: Path, remote: str) -> None:
    """The DVC data version as the run's training dataset input (MLflow's Dataset column)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.tracking import MlflowClient

    dataset = MetaDataset(resolve_dataset_source(Path(dvc_file).resolve().as_uri()), name=DATASET_NAME, digest=md5)
    tags = [InputTag("mlflow.data.context", "training"), InputTag("pluto.dvc_remote", remote)]
    MlflowClient(tracking_uri).log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags)])


def metric_key(task: str, mode: str, metric: str, baseline: str | None = None) -> str:
    """MLflow metric name of one record: `<task>.<mode>.<metric>`, under `baseline.<name>.` for a baseline.
    MLflow refuses '+' in names (the whole batch with it), so the mode `cls+mean` is written `cls_mean`."""
    key = f"{task}.{mode.replace('+', '_')}.{metric}"
    return f"baseline.{baseline}.{key}" if baseline else key


def eval_metrics(suite: dict[str, Any], baselines: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, float]:
    """Flat metrics of a suite result: each record's mean over runs (`metric_key`) and its `_std`, the suite
    score, and the baselines' means (random-init twin, mean-RGB)."""
    out = {"suite_score": float(suite["score"])}
    for r in suite["records"]:
        key = metric_key(r["task"], r["embedding_mode"], r["metric"])
        out[key], out[f"{key}_std"] = float(r["mean"]), float(r["std"])
    for name, records in (baselines or {}).items():
        for r in records:
            out[metric_key(r["task"], r["embedding_mode"], r["metric"], name)] = float(r["mean"])
    return out


def version_description(name: str, version: int, trained: str, score: float, champion: tuple[int, float] | None,
                        verdict: str) -> str:
    """A readable model-version description: what changed and the score against the champion."""
    against = (f"suite score {score:.4f} vs champion v{champion[0]} {champion[1]:.4f} ({score - champion[1]:+.4f})"
               if champion else f"suite score {score:.4f} (no champion to compare with)")
    return f"{name} v{version}: {trained}. {against}. Gate: {verdict}."


def champion_score(tracking_uri: str, name: str) -> tuple[int, float] | None:
    """(version, suite score) of the current champion, or None (no champion, or none scored)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        mv = MlflowClient(tracking_uri).get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None
    score = mv.tags.get("pluto.suite_score")
    return (int(mv.version), float(score)) if score is not None else None


def describe_version(tracking_uri: str, name: str, version: int, description: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri).update_model_version(name, str(version), description=description)


def run_data_dvc(tracking_uri: str, run_id: str, dest_dir: Path) -> Path | None:
    """The `data.dvc` a retrain logged on its run (artifact `data/data.dvc`), downloaded; None when the run has none."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    try:
        return Path(download_artifacts(run_id=run_id, artifact_path="data/data.dvc", dst_path=str(dest_dir), tracking_uri=tracking_uri))
    except (MlflowException, OSError):
        return None
