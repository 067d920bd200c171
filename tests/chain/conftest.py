"""Chain fixtures: a saved pluto_tiny directory, S3 buckets on the session's moto server, prefect.yaml deployed on a server."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> list[Path]:
    """Two pluto_tiny backbones (different init seeds) saved with pluto.models.save_model."""
    import timm
    import torch

    import pluto.models  # noqa: F401 - registers the archs
    from pluto.models import save_model

    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        out.append(save_model(timm.create_model("pluto_tiny"), tmp_path_factory.mktemp(f"tiny{seed}")))
    return out


@pytest.fixture()
def s3_buckets(moto_server, aws_env):
    """Fresh buckets on the session's moto server; returns (endpoint, data bucket, artifact bucket)."""
    import uuid

    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_server.url)
    names = [f"pluto-{kind}-{uuid.uuid4().hex[:8]}" for kind in ("data", "artifacts")]
    for n in names:
        s3.create_bucket(Bucket=n)
    return moto_server.url, names[0], names[1]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A Prefect server with the README's work pools, their `retrain` queues (limit 1) and every
    deployment of prefect.yaml (`prefect deploy --all`); yields its API URL, set as PREFECT_API_URL."""
    import asyncio
    import json
    import os
    import subprocess
    import sys

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pluto.services import start_prefect

    svc = start_prefect(tmp_path_factory.mktemp("prefect-home"))
    api = f"{svc.url}/api"

    async def pools():
        async with get_client() as client:
            template = json.loads((REPO / "deploy" / "prefect" / "k8s-work-pool.json").read_text())
            for name, kind, job in (("pluto-local", "process", None), ("pluto-k8s", "kubernetes", template)):
                await client.create_work_pool(WorkPoolCreate(name=name, type=kind, **({"base_job_template": job} if job else {})))
                await client.create_work_queue(name="retrain", work_pool_name=name, concurrency_limit=1)

    try:
        with temporary_settings(updates={PREFECT_API_URL: api}):
            asyncio.run(pools())
            out = subprocess.run([str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deploy", "--all"],
                                 cwd=REPO, env={**os.environ, "PREFECT_API_URL": api}, capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
            yield api
            APILogWorker.drain_all(timeout=5)  # flow-run logs sent from this process, before the server goes
    finally:
        svc.stop()
