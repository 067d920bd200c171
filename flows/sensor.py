"""`new-slides-sensor`: start a retrain when the slide listing under the ingest prefix changes.

Prefect OSS has no S3 event source, so new slides are detected by polling: this flow runs every
15 minutes (prefect.yaml), fingerprints the listing (names, sizes, mtimes/ETags: no bytes read)
and compares it with the fingerprint stored in a Prefect Variable by the previous poll. On a
change it triggers the `retrain/on-new-slides` deployment, whose concurrency limit of 1 keeps a
burst of uploads from starting parallel retrains. Where a bucket can emit events (S3 -> EventBridge
-> Prefect Cloud webhook), a deployment trigger on that event replaces this poll.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.deployments import run_deployment
from prefect.variables import Variable

from flows.common import resolve
from flows.ingest import ingest_source
from pluto.data_version import source_fingerprint

STATE_VARIABLE = "pluto_ingest_fingerprint"


@flow(name="new-slides-sensor")
def new_slides_sensor(config: dict[str, Any] | None = None, deployment: str = "retrain/on-new-slides") -> bool:
    """True when a retrain was triggered."""
    s = resolve(config)
    fingerprint = source_fingerprint(ingest_source(s), s.s3.endpoint_url, s.s3.region)
    if Variable.get(STATE_VARIABLE, default=None) == fingerprint:
        return False
    run_deployment(deployment, parameters={"config": config}, timeout=0)
    Variable.set(STATE_VARIABLE, fingerprint, overwrite=True)
    return True
