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
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pluto.errors import PlutoError

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
LOG_TAG_PREFIX = "promotion."


@dataclass(frozen=True)
class PromotionEvent:
    seq: int
    at: str  # UTC ISO time
    action: str  # "promote" | "rollback"
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


def _move_champion(client: Any, model: str, version: int, action: str, who: str | None, why: str, log_path: Path) -> PromotionEvent:
    if not why.strip():
        raise PlutoError(f"{model} v{version}: a reason (--why) is required to change the champion")
    client.get_model_version(model, str(version))  # raises if the version does not exist
    previous = current_version(client, model)
    event = PromotionEvent(
        seq=len(read_log(client, model)) + 1,
        at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        action=action, model=model, version=version, previous=previous,
        who=who or getpass.getuser(), why=why,
    )
    client.set_registered_model_alias(model, CHAMPION, str(version))
    for key, value in {"promoted_by": event.who, "promoted_why": why, "promoted_at": event.at, "promoted_action": action}.items():
        client.set_model_version_tag(model, str(version), f"pluto.{key}", value)
    _append(client, event, log_path)
    log.info("%s: champion v%s -> v%s (%s by %s: %s)", model, previous, version, action, event.who, why)
    return event


def promote(tracking_uri: str, model: str, version: int, *, why: str, log_path: Path, who: str | None = None) -> PromotionEvent:
    """Point `champion` at `version` and record the event."""
    from mlflow.tracking import MlflowClient

    return _move_champion(MlflowClient(tracking_uri), model, version, "promote", who, why, log_path)


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
    current = current_version(client, model)
    if current is None:
        raise PlutoError(f"{model}: no champion to roll back")
    history = champion_history(read_log(client, model))
    if len(history) < 2 or history[-1] != current:
        raise PlutoError(f"{model}: champion v{current} has no earlier champion in the promotion log")
    return _move_champion(client, model, history[-2], "rollback", who, why, log_path)
