"""`new-slides-sensor`: emit a `pluto.slides.changed` event when the slide listing under the ingest prefix changes.

Prefect OSS has no S3 event source, so new slides are detected by polling: this flow runs every
15 minutes (prefect.yaml), fingerprints the listing (names, sizes, mtimes/ETags: no bytes read)
and compares it with the listing the last successful retrain covered, kept in a Prefect Variable
(one per prefix). The retrain flow writes that Variable (`mark_seen`) only when it succeeds, with
the fingerprint it took before ingest, so slides are marked as seen only once a run covering them
has finished: a failed run leaves them new, and the next poll asks again.

On a change the sensor emits the event, unless a retrain run is already waiting to start (queued
behind a running one, or pending): that run lists the prefix when it starts, so it covers the new
slides, and a second event would only queue a duplicate. A run that is already running may have
listed before the slides landed, so it does not count. The `retrain/on-new-slides` deployment's
trigger (prefect.yaml `triggers:`, an automation on the server) creates the run; the `retrain`
work queue's concurrency limit of 1 queues it behind a running retrain instead of dropping it.
Where a bucket can emit events itself (S3 -> EventBridge -> a Prefect webhook), sending the same
event replaces this poll.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timezone
from typing import Any

from prefect import flow
from prefect.events import emit_event
from prefect.variables import Variable

from flows.common import resolve
from flows.ingest import ingest_source
from pluto.data_version import source_fingerprint

EVENT = "pluto.slides.changed"
RETRAIN_FLOW = "retrain"

log = logging.getLogger(__name__)


def prefix_resource(src: str) -> dict[str, str]:
    """The event's resource: `pluto.ingest.<hash of the prefix>` (the trigger matches `pluto.ingest.*`)."""
    return {"prefect.resource.id": f"pluto.ingest.{hashlib.sha256(src.encode()).hexdigest()[:16]}", "prefect.resource.name": src}


def seen_variable(src: str) -> str:
    """Name of the Prefect Variable holding the listing fingerprint the last successful retrain covered."""
    return prefix_resource(src)["prefect.resource.id"].replace(".", "_")


def mark_seen(src: str, fingerprint: str) -> None:
    """Record that a successful retrain covered the listing `fingerprint` of `src` (called by the retrain flow)."""
    Variable.set(seen_variable(src), fingerprint, overwrite=True)


def waiting_retrains() -> list[str]:
    """Ids of retrain flow runs due now that have not started yet (queued on the concurrency limit, or pending)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterExpectedStartTime, FlowRunFilterState, FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[RETRAIN_FLOW])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED, StateType.PENDING])),
                expected_start_time=FlowRunFilterExpectedStartTime(before_=datetime.now(timezone.utc)),
            ),
        )
    return [str(r.id) for r in runs]


@flow(name="new-slides-sensor")
def new_slides_sensor(config: dict[str, Any] | None = None) -> bool:
    """True when the listing differs from the one the last successful retrain covered and the event was emitted."""
    s = resolve(config)
    src = ingest_source(s)
    fingerprint = source_fingerprint(src, s.s3.endpoint_url, s.s3.region)
    if Variable.get(seen_variable(src), default=None) == fingerprint:
        return False
    waiting = waiting_retrains()
    if waiting:
        log.info("%s changed; retrain run(s) %s waiting to start will cover it, no event", src, ", ".join(waiting))
        return False
    emit_event(event=EVENT, resource=prefix_resource(src), payload={"prefix": src, "fingerprint": fingerprint})
    log.info("%s changed (listing %s): %s emitted", src, fingerprint, EVENT)
    return True
