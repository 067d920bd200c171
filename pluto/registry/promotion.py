"""Champion alias changes by a person (`pluto promote` / `pluto rollback`) or by the gate.

Every change is an event {seq, at, action, model, version, previous, who, why}. Events are
appended to a local JSONL file (fsync'd) and mirrored to MLflow as registered-model tags
`promotion.<seq>`; tags are never overwritten, so the log is append-only and answers "which
version was champion when" from MLflow alone. The promoted version also carries who/why/when
tags, and `pluto.promotion_seq`: written after the alias moved, it marks the event as applied.
Registry stages are deprecated in MLflow: aliases (`champion`, `challenger`) are used.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import time
import uuid
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
TAG_APPLIED = "pluto.promotion_seq"
OUTSIDE = "outside pluto (MLflow UI or API)"


@dataclass(frozen=True)
class PromotionEvent:
    seq: int
    at: str  # UTC ISO time
    action: str  # "promote" | "force" (over a failing gate) | "rollback" | "external" (moved outside pluto, found by audit)
    model: str
    version: int | None  # None only for `external`: the alias was removed
    previous: int | None  # champion before this event
    who: str
    why: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PromotionEvent":
        prev, version = d.get("previous"), d.get("version")
        return cls(
            seq=int(d["seq"]), at=str(d["at"]), action=str(d["action"]), model=str(d["model"]),
            version=None if version is None else int(version), previous=None if prev is None else int(prev),
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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _lock_tags(name: str, client: Any) -> dict[str, str] | None:
    """Tags of the lock model `name`, None when nobody holds it."""
    from mlflow.exceptions import MlflowException

    try:
        return dict(client.get_registered_model(name).tags)
    except MlflowException:
        return None


def _process_id() -> str:
    """host, pid namespace and pid: another process here can tell whether the holder still runs."""
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = ""
    return f"{socket.gethostname()}|{pidns}|{os.getpid()}"


def _gone(tags: dict[str, str], stale_s: float) -> str | None:
    """Why the lock's holder cannot be working any more (None: it may be): its process exited (same
    host and pid namespace, so the pid is meaningful here) or it has held the lock over `stale_s`."""
    host_ns, _, pid = tags.get("pluto.lock_process", "").rpartition("|")
    if host_ns and host_ns == _process_id().rpartition("|")[0] and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return f"its process {pid} has exited"
        except PermissionError:
            pass  # alive, another user's
    age_s = time.time() - float(tags.get("pluto.lock_at", 0))
    return f"held for {age_s:.0f} s (> {stale_s:.0f} s)" if age_s > stale_s else None


def _break(client: Any, name: str, held: dict[str, str], why: str, stale_s: float) -> bool:
    """Delete the lock whose token is in `held`, and no other: only the process that creates the break
    marker `<lock>.break-<token>` deletes it, after reading the token again (a second breaker that saw
    the same stale lock finds the marker, or a lock with a new token, and leaves it alone). False when
    another process is breaking it."""
    from mlflow.exceptions import MlflowException

    token = held.get("pluto.lock_token", "none")
    marker = f"{name}.break-{token}"
    try:
        client.create_registered_model(marker, tags={"pluto.lock_at": f"{time.time():.3f}"})
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        left = _lock_tags(marker, client)  # a breaker that died mid-way leaves its marker: it goes stale too
        if left is not None and time.time() - float(left.get("pluto.lock_at", 0)) > stale_s:
            _delete(client, marker)
        return False
    try:
        if (_lock_tags(name, client) or {}).get("pluto.lock_token") == token:
            log.warning("%s: breaking the lock of %s: %s", name, held.get("pluto.lock_holder"), why)
            _delete(client, name)
    finally:
        _delete(client, marker)
    return True


def _delete(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model(name)
    except MlflowException as exc:
        log.warning("could not delete %s: %s", name, exc)


@contextmanager
def champion_lock(client: Any, model: str, who: str, timeout_s: float = 60.0, stale_s: float = 600.0) -> Iterator[None]:
    """Serialise champion changes across processes and machines that share the MLflow server.

    MLflow has no lock, but creating a registered model is atomic on its unique name (the server's
    database refuses a second one): the holder creates `<model>.promotion-lock` with a token of its
    own and deletes it when done, only if the token is still its own. A lock whose holder is gone (its
    process exited, seen from the same host, or older than `stale_s` from anywhere) is broken
    (`_break`), so a crash blocks others for seconds on one machine and `stale_s` across machines.
    Waits up to `timeout_s`, then a clear error naming the holder. A file lock would need no stale
    rule, but would serialise only processes that share the work dir, not a laptop's `pluto promote`
    and a cluster's retrain.
    """
    from mlflow.exceptions import MlflowException

    name = f"{model}{LOCK_SUFFIX}"
    token = uuid.uuid4().hex
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.create_registered_model(
                name, description=f"pluto: held while the champion of {model} moves; deleted after",
                tags={"pluto.lock_holder": who, "pluto.lock_token": token, "pluto.lock_process": _process_id(),
                      "pluto.lock_at": f"{time.time():.3f}"})
            break
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        held = _lock_tags(name, client)
        if held is None:
            continue  # released in between: try again
        why = _gone(held, stale_s)
        if why and _break(client, name, held, why, stale_s):
            continue
        if time.monotonic() > deadline:
            raise PlutoError(f"{model}: the champion is being changed by {held.get('pluto.lock_holder')} (lock {name}); try again")
        time.sleep(0.2)
    try:
        yield
    finally:
        if (_lock_tags(name, client) or {}).get("pluto.lock_token") == token:
            _delete(client, name)
        else:
            log.warning("%s: the lock was broken while held (over %.0f s); leaving the next holder's lock alone", name, stale_s)


def _next_seq(events: list[PromotionEvent]) -> int:
    return max((e.seq for e in events), default=0) + 1


def _apply(client: Any, event: PromotionEvent) -> None:
    """Move the alias as `event` records, then mark the event applied on the version."""
    version = str(event.version)
    client.set_registered_model_alias(event.model, CHAMPION, version)
    tags = {"promoted_by": event.who, "promoted_why": event.why, "promoted_at": event.at, "promoted_action": event.action}
    for key, value in tags.items():
        client.set_model_version_tag(event.model, version, f"pluto.{key}", value)
    client.set_model_version_tag(event.model, version, TAG_APPLIED, str(event.seq))


def _applied(client: Any, event: PromotionEvent) -> bool:
    from mlflow.exceptions import MlflowException

    if event.action == "external" or event.version is None:
        return True  # nothing of pluto's to apply
    try:
        return client.get_model_version(event.model, str(event.version)).tags.get(TAG_APPLIED) == str(event.seq)
    except MlflowException:
        return True  # the version is gone: nothing left to apply


def move_champion(client: Any, model: str, version: int, action: str, who: str | None, why: str, log_path: Path) -> PromotionEvent:
    """Move `champion` to `version`; the caller holds `champion_lock`. The event is recorded (local
    log fsync'd, MLflow tag) before the alias moves, so a crash in between leaves a recorded change
    that the next `audit` completes, never an unrecorded one."""
    from mlflow.exceptions import MlflowException

    if not why.strip():
        raise PlutoError(f"{model} v{version}: a reason (--why) is required to change the champion")
    client.get_model_version(model, str(version))  # raises if the version does not exist
    audit(client, model, log_path)
    previous = current_version(client, model)
    event = PromotionEvent(
        seq=_next_seq(read_log(client, model)), at=_now(), action=action, model=model, version=version,
        previous=previous, who=who or getpass.getuser(), why=why,
    )
    _append(client, event, log_path)
    try:
        _apply(client, event)
    except (MlflowException, OSError) as exc:  # requests' transport errors are OSErrors
        raise PlutoError(
            f"{model}: event {event.seq} (champion v{previous} -> v{version}) is recorded, but MLflow failed before the "
            f"alias moved ({str(exc)[:200]}); the next promote, rollback, gate or `pluto registry audit` completes it"
        ) from exc
    log.info("%s: champion v%s -> v%s (%s by %s: %s)", model, previous, version, action, event.who, why)
    return event


def audit(client: Any, model: str, log_path: Path) -> PromotionEvent | None:
    """Make the promotion log account for the champion alias; the caller holds `champion_lock`.

    They disagree in two ways. The last event was recorded but its process stopped before the alias
    moved (the alias is still at the event's `previous` and the event is not marked applied): the
    change is completed as recorded. Or the alias was moved or removed outside pluto (MLflow UI or
    API): that is logged as an `external` event, so `rollback` follows it. Returns the completed or
    logged event; None when the log and the alias agree.
    """
    events = read_log(client, model)
    history = champion_history(events)
    current = current_version(client, model)
    logged = history[-1] if history else None
    if current == logged:
        return None
    last = events[-1] if events else None
    if last is not None and current == last.previous and not _applied(client, last):
        _apply(client, last)
        log.warning("%s: event %d (%s v%s by %s) was recorded but the alias had not moved; completed now",
                    model, last.seq, last.action, last.version, last.who)
        return last
    event = PromotionEvent(
        seq=_next_seq(events), at=_now(), action="external", model=model, version=current, previous=logged, who=OUTSIDE,
        why=f"champion alias found {'on v' + str(current) if current else 'removed'} while the promotion log says v{logged}; "
            "recorded by audit",
    )
    _append(client, event, log_path)
    log.warning("%s: champion moved outside pluto: v%s -> v%s (now in the promotion log)", model, logged, current)
    return event


def promote(tracking_uri: str, model: str, version: int, *, why: str, log_path: Path, who: str | None = None,
            action: str = "promote") -> PromotionEvent:
    """Point `champion` at `version` and record the event (serialised with every other champion change).
    No gate here: `pluto promote` goes through `pluto.registry.register.promote_version`."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    with champion_lock(client, model, who or getpass.getuser()):
        return move_champion(client, model, version, action, who, why, log_path)


def champion_history(events: list[PromotionEvent]) -> list[int | None]:
    """Champion versions as a stack: a promotion (or a change found outside pluto, None for a removed
    alias) pushes, a rollback pops back to the one before."""
    stack: list[int | None] = []
    for event in events:
        if event.action == "rollback":
            stack.pop()
        elif not stack or stack[-1] != event.version:
            stack.append(event.version)
    return stack


def rollback(tracking_uri: str, model: str, *, why: str, log_path: Path, who: str | None = None) -> PromotionEvent:
    """Point `champion` back at the version that was champion before the current one (also after the
    alias was moved or removed outside pluto: `audit` logs that first)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    with champion_lock(client, model, who or getpass.getuser()):
        audit(client, model, log_path)
        current = current_version(client, model)
        history = champion_history(read_log(client, model))
        if len(history) < 2 or history[-1] != current or history[-2] is None:
            raise PlutoError(f"{model}: champion {f'v{current}' if current else '(none)'} has no earlier champion in the promotion log")
        return move_champion(client, model, history[-2], "rollback", who, why, log_path)


def audit_models(tracking_uri: str, log_path: Path, models: list[str] | None = None) -> dict[str, PromotionEvent | None]:
    """`audit` each of `models` (default: every registered model but the locks), each under its lock."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    if models is None:
        models = [m.name for m in client.search_registered_models(max_results=1000) if LOCK_SUFFIX not in m.name]
    found = {}
    for model in models:
        with champion_lock(client, model, "audit"):
            found[model] = audit(client, model, log_path)
    return found
