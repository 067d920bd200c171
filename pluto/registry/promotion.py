"""Champion alias changes by a person (`pluto promote` / `pluto rollback`) or by the gate.

Every change is an event {seq, at, action, model, version, previous, who, why}. Events are
appended to a local JSONL file (fsync'd) and mirrored to MLflow as registered-model tags
`promotion.<seq>`; tags are never overwritten, so the log is append-only and answers "which
version was champion when" from MLflow alone. The promoted version also carries who/why/when
tags. Registry stages are deprecated in MLflow: aliases (`champion`, `challenger`) are used.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pluto.errors import PlutoError

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
LOG_TAG_PREFIX = "promotion."
LOCK_SUFFIX = ".promotion-lock"


@dataclass(frozen=True)
class PromotionEvent:
    seq: int
    at: str  # UTC ISO time
    action: str  # "promote" | "force" (over a failing gate) | "rollback" | "external" (moved outside pluto, found by audit)
    model: str
    version: int
    previous: int | None  # champion before this event
    who: str
    why: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PromotionEvent":
        prev = d.get("previous")
        return cls(
            seq=int(d["seq"]), at=str(d["at"]), action=str(d["action"]), model=str(d["model"]),
            version=int(d["version"]), previous=None if prev is None else int(prev),
            who=str(d["who"]), why=str(d["why"]),
        )


def current_version(client: Any, model: str, alias: str = CHAMPION) -> int | None:
    """Version number behind `alias`, or None when the alias is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return int(client.get_model_version_by_alias(model, alias).version)
    except MlflowException:
        return None


def read_log(client: Any, model: str) -> list[PromotionEvent]:
    """The promotion log of `model` as recorded in MLflow, oldest first."""
    tags = client.get_registered_model(model).tags
    events = [PromotionEvent.from_dict(json.loads(v)) for k, v in tags.items() if k.startswith(LOG_TAG_PREFIX)]
    return sorted(events, key=lambda e: e.seq)


def _append(client: Any, event: PromotionEvent, log_path: Path) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as fh:
        fh.write(json.dumps(event.to_dict(), sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    client.set_registered_model_tag(event.model, f"{LOG_TAG_PREFIX}{event.seq:06d}", json.dumps(event.to_dict()))


@contextmanager
def champion_lock(client: Any, model: str, who: str, timeout_s: float = 60.0, stale_s: float = 600.0) -> Iterator[None]:
    """Serialise champion changes across processes and machines that share the MLflow server.

    MLflow has no lock, but creating a registered model is atomic on its unique name: the holder
    creates `<model>.promotion-lock` and deletes it when done. A lock older than `stale_s` (its holder
    died) is broken with a warning. Waits up to `timeout_s`, then a clear error naming the holder.
    """
    from mlflow.exceptions import MlflowException

    name = f"{model}{LOCK_SUFFIX}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.create_registered_model(name, tags={"pluto.lock_holder": who, "pluto.lock_at": f"{time.time():.3f}"},
                                           description=f"pluto: held while the champion of {model} moves; deleted after")
            break
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        try:
            held = client.get_registered_model(name).tags
        except MlflowException:
            continue  # released in between: try again
        if time.time() - float(held.get("pluto.lock_at", 0)) > stale_s:
            log.warning("%s: breaking a stale champion lock held by %s", model, held.get("pluto.lock_holder"))
            _release(client, name)
            continue
        if time.monotonic() > deadline:
            raise PlutoError(f"{model}: the champion is being changed by {held.get('pluto.lock_holder')} (lock {name}); try again")
        time.sleep(0.2)
    try:
        yield
    finally:
        _release(client, name)


def _release(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model(name)
    except MlflowException as exc:
        log.warning("could not release %s: %s", name, exc)


def _next_seq(events: list[PromotionEvent]) -> int:
    return max((e.seq for e in events), default=0) + 1


def move_champion(client: Any, model: str, version: int, action: str, who: str | None, why: str, log_path: Path) -> PromotionEvent:
    """Move `champion` to `version`; the caller holds `champion_lock`. The event is recorded (local
    log fsync'd, MLflow tag) before the alias moves, so a crash in between leaves a logged intent
    that `audit` reconciles, never an unlogged change."""
    if not why.strip():
        raise PlutoError(f"{model} v{version}: a reason (--why) is required to change the champion")
    client.get_model_version(model, str(version))  # raises if the version does not exist
    audit(client, model, log_path)
    previous = current_version(client, model)
    event = PromotionEvent(
        seq=_next_seq(read_log(client, model)),
        at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        action=action, model=model, version=version, previous=previous,
        who=who or getpass.getuser(), why=why,
    )
    _append(client, event, log_path)
    client.set_registered_model_alias(model, CHAMPION, str(version))
    for key, value in {"promoted_by": event.who, "promoted_why": why, "promoted_at": event.at, "promoted_action": action}.items():
        client.set_model_version_tag(model, str(version), f"pluto.{key}", value)
    log.info("%s: champion v%s -> v%s (%s by %s: %s)", model, previous, version, action, event.who, why)
    return event


def audit(client: Any, model: str, log_path: Path) -> PromotionEvent | None:
    """Log an alias change made outside pluto (MLflow UI or API) as an `external` event; None when the log agrees."""
    events = read_log(client, model)
    history = champion_history(events)
    current = current_version(client, model)
    logged = history[-1] if history else None
    if current is None or current == logged:
        if current is None and logged is not None:
            log.warning("%s: the champion alias was removed outside pluto (the log says v%s)", model, logged)
        return None
    event = PromotionEvent(
        seq=_next_seq(events), at=datetime.now(timezone.utc).isoformat(timespec="seconds"), action="external",
        model=model, version=current, previous=logged, who="outside pluto (MLflow UI or API)",
        why=f"champion alias found on v{current} while the promotion log says v{logged}; recorded by audit",
    )
    _append(client, event, log_path)
    log.warning("%s: champion moved outside pluto: v%s -> v%s (now in the promotion log)", model, logged, current)
    return event


def promote(tracking_uri: str, model: str, version: int, *, why: str, log_path: Path, who: str | None = None,
            action: str = "promote") -> PromotionEvent:
    """Point `champion` at `version` and record the event (serialised with every other champion change)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    with champion_lock(client, model, who or getpass.getuser()):
        return move_champion(client, model, version, action, who, why, log_path)


def champion_history(events: list[PromotionEvent]) -> list[int]:
    """Champion versions as a stack: a promotion pushes, a rollback pops back to the one before."""
    stack: list[int] = []
    for event in events:
        if event.action == "rollback":
            stack.pop()
        elif not stack or stack[-1] != event.version:
            stack.append(event.version)
    return stack


def rollback(tracking_uri: str, model: str, *, why: str, log_path: Path, who: str | None = None) -> PromotionEvent:
    """Point `champion` back at the version that was champion before the current one."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    with champion_lock(client, model, who or getpass.getuser()):
        audit(client, model, log_path)
        current = current_version(client, model)
        if current is None:
            raise PlutoError(f"{model}: no champion to roll back")
        history = champion_history(read_log(client, model))
        if len(history) < 2 or history[-1] != current:
            raise PlutoError(f"{model}: champion v{current} has no earlier champion in the promotion log")
        return move_champion(client, model, history[-2], "rollback", who, why, log_path)
