"""`evaluate` flow: the eval suite on the trained backbone, with its baselines; table to Prefect and MLflow."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact

from flows.common import cached_or_refresh, resolve, stage_cache_key, stage_run, was_cached
from pluto.code_version import code_version
from pluto.config import Settings
from pluto.eval.records import EVAL_SUITE_VERSION
from pluto.registry.checkpoint_store import sha256_file
from pluto.registry.lineage import metric_key


def bundled_tasks(s: Settings) -> list[dict[str, Any]]:
    """The demo suite on the bundled data: CRC tissue classes, and magnification from the CMU slide."""
    root = s.paths.data_root
    crc = root / "patches_crc_val_he_7k"
    return [
        {"name": "crc_tissue", "dataset": "folder", "root": str(crc), "split": "cv", "labels_csv": str(crc / "labels.csv")},
        {"name": "magnification", "dataset": "resolution", "root": str(root / "wsi" / "CMU-1-Small-Region.svs"), "split": "cv"},
    ]


def table_rows(result: dict) -> list[dict[str, Any]]:
    """One row per record: the model's, then each baseline's (random-init twin, mean RGB) on the same task."""
    named = [("model", r) for r in result["records"]]
    named += [(name, r) for name, recs in result.get("baselines", {}).items() for r in recs]
    return [{"model": who, "task": r["task"], "mode": r["embedding_mode"], "metric": r["metric"], "mean": round(r["mean"], 4),
             "std": round(r["std"], 4), "n": len(r["values"])} for who, r in named]


def metric_name(row: dict[str, Any]) -> str:
    """MLflow metric key of a table row: the model's, or a baseline's under `baseline.<name>.`."""
    return metric_key(row["task"], row["mode"], row["metric"], None if row["model"] == "model" else row["model"])


@task(cache_key_fn=stage_cache_key, persist_result=True, result_serializer="json")
def evaluate_model(model_dir: str, tasks: list[dict[str, Any]], eval_cfg: Any, out_dir: str, input_hash: str, config_hash: str,
                   code_hash: str) -> dict:
    from pluto.eval.suite import TaskConfig, evaluate

    result = evaluate(model_dir, [TaskConfig.from_dict(t) for t in tasks], eval_cfg, Path(out_dir))
    return result.to_dict()


@flow(name="evaluate")
def evaluate_flow(config: dict[str, Any] | None = None, model_dir: str = "", data_hash: str = "", parent_run_id: str | None = None) -> dict:
    s = resolve(config)
    tasks = bundled_tasks(s)
    weights = sha256_file(Path(model_dir) / "model.safetensors")[:16]
    out_dir = s.paths.work_dir / "eval" / weights
    # the suite version is in the key: a protocol change must not come back from the cache under the old numbers
    key = f"{s.config_hash('eval')}{json.dumps(tasks, sort_keys=True)}{EVAL_SUITE_VERSION}"
    config_hash = hashlib.sha256(key.encode()).hexdigest()[:16]
    run = cached_or_refresh(evaluate_model, [out_dir / "records.json"])
    state = run(model_dir, tasks, s.eval, str(out_dir), input_hash=weights, config_hash=config_hash,
                code_hash=code_version("pluto.eval.suite"), return_state=True)
    result = state.result()
    rows = table_rows(result)
    create_table_artifact(key="eval-table", table=rows, description=f"suite score {result['score']:.4f}")
    with stage_run(s, "evaluate", parent_run_id, data_hash) as tracker:
        tracker.log_metrics({metric_name(r): r["mean"] for r in rows} | {"suite_score": result["score"]})
        tracker.set_tags({"pluto.cached": was_cached(state), "pluto.weights_sha256": weights})
        for name in ("results.html", "results.png", "results.csv", "records.json"):
            if (out_dir / name).is_file():
                tracker.log_artifact(out_dir / name, "eval")
    return {**result, "cached": was_cached(state)}
