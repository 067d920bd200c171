"""`register` flow: checkpoint to S3 (multipart), model version (challenger), champion gate."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from flows.common import io_retries, resolve, stage_run
from pluto.registry.checkpoint_store import CheckpointRef, sha256_file
from pluto.registry.gate import GateDecision, SuiteScores
from pluto.registry.lineage import champion_score, describe_version, version_description
from pluto.registry.provenance import git_sha
from pluto.train.checkpoint import list_checkpoints

log = logging.getLogger(__name__)


@task
def upload_checkpoint_task(path: str, dest: str, endpoint_url: str | None, region: str, chunk_mb: int) -> dict[str, Any]:
    from pluto.registry.checkpoint_store import upload_checkpoint

    return upload_checkpoint(
        Path(path), dest, endpoint_url=endpoint_url, region=region, threshold_mb=chunk_mb, chunk_mb=chunk_mb
    ).to_dict()


@task
def register_task(model_dir: str, tracking_uri: str, run_id: str, scores: dict, data_hash: str, sha: str, key: str,
                  checkpoint: dict | None, mode: str) -> dict[str, Any]:
    from pluto.registry.register import register_model

    return register_model(
        Path(model_dir), tracking_uri=tracking_uri, run_id=run_id, scores=SuiteScores.from_dict(scores),
        data_hash=data_hash, git_sha=sha, idempotency_key=key,
        checkpoint=CheckpointRef.from_dict(checkpoint) if checkpoint else None, embedding_mode=mode,
    ).to_dict()


@task
def gate_task(tracking_uri: str, name: str, version: int, min_margin: float, log_path: str, floor: bool = True,
              auto_promote: bool = True) -> dict[str, Any]:
    from pluto.registry.register import gate

    return gate(tracking_uri, name, version, min_margin=min_margin, log_path=Path(log_path), floor=floor,
                auto_promote=auto_promote).to_dict()


@flow(name="register")
def register_flow(
    config: dict[str, Any] | None = None, model_dir: str = "", run_dir: str = "", suite: dict | None = None,
    data_hash: str = "", parent_run_id: str | None = None, trained: str = "",
) -> dict[str, Any]:
    """The model is logged under the parent (retrain) run, which carries the evaluation metrics, the
    training parameters and the dataset input, so the version's source run is the one users compare."""
    s = resolve(config)
    scores = SuiteScores.from_suite(suite or {})
    key = f"{sha256_file(Path(model_dir) / 'model.safetensors')[:16]}-{data_hash[:16]}-{scores.suite_version}"
    ckpts = list_checkpoints(Path(run_dir) / "checkpoints")
    checkpoint = None
    if ckpts:
        upload = io_retries(upload_checkpoint_task, s)
        checkpoint = upload(str(ckpts[0]), s.chain.checkpoint_store, s.s3.endpoint_url, s.s3.region, s.chain.multipart_chunk_mb)
    with stage_run(s, "register", parent_run_id, data_hash) as tracker:
        record = io_retries(register_task, s)(
            model_dir, s.mlflow.tracking_uri, parent_run_id or tracker.run_id, scores.to_dict(), data_hash, git_sha(), key,
            checkpoint, s.chain.embedding_mode,
        )
        champion = champion_score(s.mlflow.tracking_uri, record["name"])
        decision = gate_task(
            s.mlflow.tracking_uri, record["name"], record["version"], s.chain.gate_min_margin,
            str(s.paths.work_dir / "registry" / "promotions.jsonl"), s.chain.quality_floor, s.chain.auto_promote,
        )
        promoted = decision["promote"] and s.chain.auto_promote
        tracker.set_tags({"pluto.model_version": record["version"], "pluto.promoted": promoted})
        if promoted and s.chain.dvc_project:  # the project's data.dvc names the champion's data
            from pluto.data_version import publish
            from pluto.errors import PlutoError

            try:  # the champion has moved: a data.dvc that cannot follow is a warning, not a failed retrain
                publish(s.chain.dvc_project, s.paths.work_dir / "data.dvc", s.chain.dvc_remote, s.s3.endpoint_url,
                        cache_dir=s.paths.work_dir / ".dvc" / "cache")
            except PlutoError as exc:
                log.warning("%s; %s/data.dvc still names the previous champion's data", exc, s.chain.dvc_project)
        if promoted and s.chain.data_git:  # opt-in: model/<name>/v<N> at the commit of its data
            from pluto.data_git import tag_model_version

            tag_model_version(s.paths.work_dir, record["name"], record["version"], data_hash, s.chain.data_git_remote)
        verdict = ("promoted to champion" if promoted else "passes the gate; awaiting `pluto promote` (chain.auto_promote is off)"
                   if decision["promote"] else "not promoted: " + "; ".join(decision["reasons"]))
        table = GateDecision.from_dict(decision).markdown()  # per task: candidate, champion, random init, mean RGB, margin
        describe_version(s.mlflow.tracking_uri, record["name"], record["version"], version_description(
            record["name"], record["version"], trained or f"registered from {model_dir}", scores.score,
            champion if champion and champion[0] != record["version"] else None, verdict)
            + f"\n\nQuality floor: {scores.floor.get('reason', 'not computed')}\n\n{table}")
        url = f"{s.mlflow.tracking_uri.rstrip('/')}/#/models/{record['name']}/versions/{record['version']}?workflowType=machine_learning"
    create_link_artifact(key="mlflow-model-version", link=url, link_text=f"{record['name']} v{record['version']}")
    create_markdown_artifact(key="gate-decision",
                             markdown=f"**{record['name']} v{record['version']}**: {verdict} ({decision['summary']})\n\n{table}")
    return {"record": record, "decision": decision, "url": url, "promoted": promoted, "verdict": verdict}
