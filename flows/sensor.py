"""`new-slides-sensor`: emit a `pluto.slides.changed` event when the slide listing under the ingest prefix changes.

Prefect OSS has no S3 event source, so new slides are detected by polling: this flow runs every
15 minutes (prefect.yaml), fingerprints the listing (names, sizes, mtimes/ETags: no bytes read)
and compares it with the fingerprint the previous poll stored in a Prefect Variable (one per
prefix). On a change it emits the event; the `retrain/on-new-slides` deployment's trigger
(prefect.yaml `triggers:`, an automation on the server) starts the retrain, and that deployment's
concurrency limit of 1 keeps a burst of uploads from starting parallel retrains. Where a bucket
can emit events itself (S3 -> EventBridge -> a Prefect webhook), sending the same event replaces this poll.
"""

from __future__ import annotations

import hashlib
from typing import Any

from prefect import flow
from prefect.events import emit_event
from prefect.variables import Variable

from flows.common import resolve
from flows.ingest import ingest_source
from pluto.data_version import source_fingerprint

EVENT = "pluto.slides.changed"


def prefix_resource(src: str) -> dict[str, str]:
    """The event's resource: `pluto.ingest.<hash of the prefix>` (the trigger matches `pluto.ingest.*`)."""
    return {"prefect.resource.id": f"pluto.ingest.{hashlib.sha256(src.encode()).hexdigest()[:16]}", "prefect.resource.name": src}


@flow(name="new-slides-sensor")
def new_slides_sensor(config: dict[str, Any] | None = None) -> bool:
    """True when the listing changed since the last poll (and the event was emitted)."""
    s = resolve(config)
    src = ingest_source(s)
    fingerprint = source_fingerprint(src, s.s3.endpoint_url, s.s3.region)
    resource = prefix_resource(src)
    state_variable = resource["prefect.resource.id"].replace(".", "_")
    if Variable.get(state_variable, default=None) == fingerprint:
        return False
    emit_event(event=EVENT, resource=resource, payload={"prefix": src, "fingerprint": fingerprint})
    Variable.set(state_variable, fingerprint, overwrite=True)
    return True
