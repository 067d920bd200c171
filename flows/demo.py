"""`make demo`: the whole retraining chain on the bundled slides, on CPU, with pluto_tiny.

Starts real servers on fixed 127.0.0.1 ports (MLflow at the settings' tracking URI, :5000 by
default, with sqlite + artifacts under work/mlflow; a Prefect server on :4200 with PREFECT_HOME under
work/prefect), runs the `retrain` flow (ingest -> QC -> tile -> DVC data version -> pretrain ->
evaluate -> register -> gate) and prints the UI addresses. Everything persists in the work dir: the
DVC remote and the checkpoint store are the embedded file stores under work/stores, so after the
demo exits `pluto services up` serves the same runs and `pluto data checkout`, `pluto promote` and
`pluto rollback` work with no configuration. A second run with unchanged slides takes the data
stages from the Prefect cache, trains with a new seed and registers a second version of
`pluto-tiny`. Run: `python -m flows.demo`. It lives in flows/ because it drives Prefect; pluto/ never imports it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from pluto.config import load_settings
from pluto.services import start_services

log = logging.getLogger("pluto.demo")

def demo_overrides(work_dir: Path, mlflow_url: str) -> dict:
    """Settings for the CPU demo: small tiles, a short pretraining of pluto_tiny (its recipe, `pluto config`
    shows it, supplies crops, heads and batch), the quick eval preset with its baselines."""
    return {
        "paths": {"work_dir": str(work_dir)},
        "mlflow": {"tracking_uri": mlflow_url},
        "tiling": {"mpps": [0.5, 1.0, 2.0], "tile_pxs": [224]},
        "train": {
            "arch": "pluto_tiny", "steps": 200, "precision": "fp32", "num_workers": 0, "ckpt_every": 60, "keep_ckpts": 2,
        },
        "eval": {"preset": "quick", "baselines": True, "cache_dir": str(work_dir / "embeddings")},
        "chain": {"task_retries": 2, "retry_delay_s": 1.0, "auto_promote": True},  # the gate promotes
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API call otherwise
    for key in ("PREFECT_SERVER_ANALYTICS_ENABLED", "GX_ANALYTICS_ENABLED", "MLFLOW_ENABLE_TELEMETRY"):
        os.environ.setdefault(key, "false")
    settings = load_settings()
    work = settings.paths.work_dir.resolve()
    started = time.monotonic()
    services = start_services(work, settings.mlflow.tracking_uri)
    mlflow, prefect = services
    try:
        os.environ["PREFECT_HOME"] = str(work / "prefect")
        os.environ["PREFECT_API_URL"] = f"{prefect.url}/api"
        from flows.retrain import retrain
        from pluto.registry.gate import GateDecision

        config = demo_overrides(work, mlflow.url)
        result = retrain(config)
        reg = result["stages"]["register"]
        cached = [k for k, v in result["stages"].items() if isinstance(v, dict) and v.get("cached")]
        lines = [
            f"retrain finished in {time.monotonic() - started:.0f} s (seed {result['seed']}, data {result['data']['md5']})",
            f"stages from cache: {', '.join(cached) or 'none'}",
            f"registered {reg['record']['name']} v{reg['record']['version']}: "
            + reg["verdict"],
            GateDecision.from_dict(reg["decision"]).markdown(),  # beside the champion: the random-init twin and mean RGB
            f"gate: {reg['decision']['summary']}",  # includes the quality floor: paired vs the random-init twin
            f"MLflow UI:  {mlflow.url}  (model: {reg['url']})",
            f"Prefect UI: {prefect.url}",
        ]
        sys.stdout.write("\n".join(lines) + "\n")
        if sys.stdin.isatty():
            input("Servers stay up for the UIs; press Enter to stop them. ")
    finally:
        if "prefect" in sys.modules:  # ship buffered flow-run logs before the API goes away
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=5)
        for svc in reversed(services):
            svc.stop()


if __name__ == "__main__":
    main()
