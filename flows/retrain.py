"""`retrain`: ingest -> QC -> tile -> data version -> pretrain -> evaluate -> register -> gate.

One parent MLflow run; every stage's run is nested under it and records the git sha and the DVC
data version. The data plane shares one Dask cluster (an existing one from `chain.dask_address`,
else a LocalCluster on 127.0.0.1 started here). Unchanged stages come from the Prefect cache.
With `chain.warm_start == "champion"` pretraining starts from the registered champion's weights
(downloaded into WORK/champion/v<N>); the first run, with no champion yet, trains from scratch.

The work-dir lock records this flow run and its MLflow run; a run that finds such a record left by
a killed predecessor marks that one's runs KILLED / Crashed. At the end (success or not) every
Tracker JSONL under the work dir is replayed into MLflow (`pluto.tracking.sync_runs`), so metrics
queued during an outage or by a killed run arrive on the next run.

On success the run records the ingest listing it took (fingerprinted before ingest) as seen by the
new-slides sensor (`flows.sensor.mark_seen`); slides that landed later, or that a failed run
listed, stay new and trigger another run.
"""

from __future__ import annotations

import logging
import secrets
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_link_artifact
from prefect.runtime import flow_run

from flows.common import end_dead_holder_runs, io_retries, local_cluster_kwargs, resolve, work_dir_lock
from flows.evaluate import evaluate_flow
from flows.ingest import ingest_flow, ingest_source
from flows.pretrain import pretrain_flow
from flows.qc import qc_flow
from flows.register import register_flow
from flows.sensor import mark_seen
from flows.tile import tile_flow
from pluto.data_version import source_fingerprint
from pluto.registry.lineage import GIT_COMMIT_TAG, eval_metrics, log_data_version
from pluto.registry.provenance import git_sha
from pluto.registry.register import model_name
from pluto.tracking import Tracker, sync_runs, tracking_files

log = logging.getLogger(__name__)


@task
def champion_model_dir(tracking_uri: str, name: str, dest_dir: str) -> str:
    from pluto.registry.register import download_model_dir

    found = download_model_dir(tracking_uri, name, Path(dest_dir))
    return str(found) if found else ""


@task
def commit_data_version(work_dir: str, remote: str, endpoint_url: str | None, data_root: str, git: bool = False,
                        git_remote: str | None = None) -> dict[str, Any]:
    from pluto.data_version import commit_data

    version = commit_data(work_dir, remote, endpoint_url, data_root=Path(data_root))
    if git:  # opt-in (chain.data_git): data.dvc committed and tagged data/<md5[:8]>
        from pluto.data_git import commit_version

        commit_version(Path(work_dir), version.md5, git_remote)
    return version.to_dict()


def replay_tracking(work_dir: Path, tracking_uri: str) -> None:
    """Best effort: send MLflow what the work dir's Tracker JSONL files hold and it lacks; logged, never raised."""
    if not tracking_uri:
        return
    try:
        report = sync_runs(tracking_files(work_dir), tracking_uri)
    except Exception as exc:  # noqa: BLE001 - a replay failure must not fail the run; the next run retries
        log.warning("tracking replay into %s skipped: %s", tracking_uri, str(exc)[:300])
        return
    log.info("tracking replay: %s", report.to_dict())


def record_data_version(s: Any, parent: Tracker, data: dict[str, Any]) -> None:
    """The DVC version as the run's dataset input (MLflow's Dataset column) and data.dvc as an artifact."""
    dvc_file = s.paths.work_dir / "data.dvc"
    parent.log_artifact(dvc_file, "data")
    if parent.run_id:  # best effort like every tracker call: an MLflow outage must not fail the retrain
        try:
            log_data_version(s.mlflow.tracking_uri, parent.run_id, data["md5"], dvc_file, data["remote"])
        except Exception as exc:  # noqa: BLE001
            log.warning("dataset input for run %s not logged: %s", parent.run_id, str(exc)[:300])


def _init_label(init_from: str) -> str:
    """`champion v<N>` for a warm start from WORK/champion/v<N>/..., else `scratch`."""
    version = next((p for p in Path(init_from).parts if p.startswith("v") and p[1:].isdigit()), None) if init_from else None
    return f"champion {version}" if version else ("scratch" if not init_from else init_from)


def _with_dask_address(config: dict[str, Any], address: str) -> dict[str, Any]:
    return {**config, "chain": {**config.get("chain", {}), "dask_address": address}}


@flow(name="retrain")
def retrain(config: dict[str, Any] | None = None, seed: int | None = None, launcher: str = "local", nproc: int = 1) -> dict[str, Any]:
    """`config`: settings overrides (nested dict); `seed`: training seed, a fresh one when None."""
    config = dict(config or {})
    s = resolve(config)
    seed = secrets.randbelow(2**31) if seed is None else seed
    me = f"flow run {flow_run.id or 'local'}"
    # the exit stack closes the local Dask cluster whatever fails, after the parent run is closed
    with work_dir_lock(s.paths.work_dir, me, flow_run_id=str(flow_run.id or "")) as lock, ExitStack() as stack:
        if not s.chain.dask_address:
            from distributed import LocalCluster

            cluster = stack.enter_context(LocalCluster(**local_cluster_kwargs(s)))
            config = _with_dask_address(config, cluster.scheduler_address)
        name = model_name(s.train.arch)
        sha = git_sha()
        parent = Tracker(
            s.paths.work_dir / "tracking" / "retrain.jsonl", s.mlflow.tracking_uri, s.mlflow.experiment,
            f"retrain {name} seed {seed}", tags={"pluto.git_sha": sha, GIT_COMMIT_TAG: sha, "pluto.flow": "retrain"},
            connect_now=True, system_metrics=True,
        )
        status = "FAILED"
        try:
            lock.record(mlflow_run_id=parent.run_id or "")
            end_dead_holder_runs(lock.previous, s.mlflow.tracking_uri, f"{me}, MLflow run {parent.run_id}")
            if parent.url:
                create_link_artifact(key="mlflow-retrain-run", link=parent.url, link_text="MLflow retrain run")
            parent.log_params({"seed": seed, "launcher": launcher, "config_hash": s.config_hash(), "arch": s.train.arch,
                               "steps": s.train.steps, "global_batch": s.train.global_batch,
                               "patch_sizes": ",".join(map(str, s.train.ssl.patch_sizes)), "warm_start": s.chain.warm_start,
                               "eval_preset": s.eval.preset})
            src = ingest_source(s)
            listing = source_fingerprint(src, s.s3.endpoint_url, s.s3.region)  # before ingest lists: never newer than it
            stages: dict[str, Any] = {
                "ingest": ingest_flow(config, parent.run_id),
                "qc": qc_flow(config, parent.run_id),
                "tile": tile_flow(config, parent.run_id),
            }
            data = io_retries(commit_data_version, s)(str(s.paths.work_dir), s.chain.dvc_remote, s.s3.endpoint_url,
                                                      str(s.paths.data_root), s.chain.data_git, s.chain.data_git_remote)
            parent.set_tags({"pluto.data_hash": data["md5"]})
            record_data_version(s, parent, data)
            init_from = ""
            if s.chain.warm_start == "champion":
                init_from = io_retries(champion_model_dir, s)(
                    s.mlflow.tracking_uri, model_name(s.train.arch), str(s.paths.work_dir / "champion")
                )
                log.info("warm start: %s", init_from or "no champion yet, training from scratch")
            parent.set_tags({"pluto.init_from": init_from or "scratch"})
            parent.log_params({"init_from": _init_label(init_from)})
            stages["pretrain"] = pretrain_flow(config, data["md5"], seed, launcher, nproc, parent.run_id, init_from)
            stages["evaluate"] = evaluate_flow(config, stages["pretrain"]["model_dir"], data["md5"], parent.run_id)
            stages["register"] = register_flow(
                config, stages["pretrain"]["model_dir"], stages["pretrain"]["run_dir"], stages["evaluate"], data["md5"], parent.run_id,
                trained=f"{s.train.steps} steps of {s.train.arch} (seed {seed}) from {_init_label(init_from)} on data {data['md5'][:8]}",
            )
            parent.log_metrics(eval_metrics(stages["evaluate"], stages["evaluate"].get("baselines")))
            status = "FINISHED"
            mark_seen(src, listing)  # the new-slides sensor asks again for slides no successful run has covered
        finally:
            parent.close(status)
            replay_tracking(s.paths.work_dir, s.mlflow.tracking_uri)
        return {"seed": seed, "data": data, "mlflow_run": parent.url, "mlflow_run_id": parent.run_id, "stages": stages}
