"""`pretrain` flow: launch (or re-attach to) the training job for this data version and wait for it.

The run dir and job name derive from the data version, the train config and the seed, so a
restarted flow finds its job still running (`pluto.train.launch.launch` re-attaches by job name)
and a new seed gets a fresh run dir instead of resuming a finished run. `init_from` (a model
directory, e.g. the champion's) warm-starts the backbones and is part of the config hash; the
trainer's MLflow run nests under this stage's run, itself nested under the retrain run.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.common import cached_or_refresh, resolve, stage_cache_key, stage_run, was_cached
from pluto.code_version import code_version
from pluto.errors import PlutoError
from pluto.train.config import TrainConfig


@task(cache_key_fn=stage_cache_key, persist_result=True, result_serializer="json")
def pretrain_job(cfg: TrainConfig, launcher: str, nproc: int, input_hash: str, config_hash: str, code_hash: str) -> dict[str, Any]:
    from pluto.train.launch import launch

    job_id, state = launch(cfg, launcher, nproc_per_node=nproc, wait=True)
    if state != "succeeded":
        raise PlutoError(f"pretraining job {job_id} ({cfg.cluster.job_name}) ended {state}; see {cfg.run_dir}")
    return {"job_id": job_id, "state": state, "model_dir": str(Path(cfg.run_dir) / "export")}


@flow(name="pretrain")
def pretrain_flow(
    config: dict[str, Any] | None = None, data_hash: str = "", seed: int = 0, launcher: str = "local", nproc: int = 1,
    parent_run_id: str | None = None, init_from: str = "",
) -> dict[str, Any]:
    s = resolve(config)
    base = replace(s.train, seed=seed, data=str(s.paths.tiles_dir), init_from=init_from or s.train.init_from)
    config_hash = hashlib.sha256(repr(sorted(asdict(base).items())).encode()).hexdigest()[:16]
    name = f"pluto-pretrain-{data_hash[:8]}-{config_hash[:8]}"
    run_dir = Path(s.train.run_dir) if Path(s.train.run_dir).is_absolute() else s.paths.work_dir / "train"
    with stage_run(s, "pretrain", parent_run_id, data_hash) as tracker:
        cfg = replace(
            base, run_dir=str(run_dir / name), tracking_uri=s.train.tracking_uri or s.mlflow.tracking_uri,
            experiment=s.mlflow.experiment, run_name=f"pretrain-{name}", cluster=replace(base.cluster, job_name=name),
            parent_run_id=tracker.run_id or "",
        )
        tracker.log_params({"arch": cfg.arch, "steps": cfg.steps, "seed": seed, "launcher": launcher, "job_name": name,
                            "init_from": cfg.init_from})
        run = cached_or_refresh(pretrain_job, [Path(cfg.run_dir) / "export"])
        state = run(cfg, launcher, nproc, input_hash=data_hash, config_hash=config_hash,
                    code_hash=code_version("pluto.train.trainer"), return_state=True)
        out = state.result()
        tracker.set_tags({"pluto.cached": was_cached(state), "pluto.model_dir": out["model_dir"]})
    return {**out, "cached": was_cached(state), "run_dir": cfg.run_dir}
