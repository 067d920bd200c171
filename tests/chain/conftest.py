"""Chain fixtures: a saved pluto_tiny directory and S3 buckets on the session's moto server."""

from __future__ import annotations

from pathlib import Path

import pytest


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
