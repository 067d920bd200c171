"""`python -m pluto.train CONFIG.json` — the per-process entry point torchrun starts on every rank.

The edge of the torch-only trainer: reads torchrun's RANK / LOCAL_RANK / WORLD_SIZE, sets up
logging, loads the TrainConfig JSON written by the launcher and calls `train`. Exit codes: 0 done,
143 preempted by SIGTERM after checkpointing (128 + SIGTERM, so schedulers requeue), 1 failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from pluto.train.config import TrainConfig
from pluto.train.trainer import DistInfo, train

PREEMPTED_EXIT = 143


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pluto.train", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="TrainConfig as JSON (written by pluto.train.launch)")
    args = parser.parse_args(argv)
    # the tracker retries with its own backoff and probes /health first; MLflow's built-in HTTP
    # retries (~4 min per request by default) would only hold its sender thread on a dead server
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    info = DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    torchrun="TORCHELASTIC_RUN_ID" in os.environ,
                    restart_count=int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)))
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{info.rank} %(name)s %(levelname)s %(message)s")
    with open(args.config) as fh:
        cfg = TrainConfig.from_dict(json.load(fh))
    result = train(cfg, info)
    return PREEMPTED_EXIT if result.preempted else 0


if __name__ == "__main__":
    sys.exit(main())
