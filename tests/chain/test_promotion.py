"""Promotion as designed, against a real MLflow server: serialised across processes, an append-only log
whose entries never collide, alias changes made outside pluto detected, the gate's verdict before a
manual promotion and --force to override it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pluto.errors import PlutoError
from pluto.registry.promotion import (
    LOCK_SUFFIX, audit, audit_models, champion_history, champion_lock, current_version, promote, read_log, rollback,
)
from tests.chain.test_registry import BETTER, GOOD, WORSE, _register

pytestmark = pytest.mark.integration

PROMOTER = """
import sys
from pathlib import Path
from pluto.registry.promotion import promote
url, model, version, log_path, who = sys.argv[1:]
for i in range(3):
    promote(url, model, int(version), why=f"{who} round {i}", who=who, log_path=Path(log_path))
"""


@pytest.fixture(scope="module")
def promo_mlflow(tmp_path_factory):
    """Its own MLflow server: these tests read whole promotion logs, which other modules' promotions would share."""
    from pluto.services import start_mlflow

    svc = start_mlflow(tmp_path_factory.mktemp("promotion-mlflow"))
    yield svc
    svc.stop()


@pytest.fixture()
def versions(promo_mlflow, tiny_dirs, tmp_path):
    url = promo_mlflow.url
    made = [_register(url, d, s, f"promo-{tmp_path.name}-{i}", tmp_path) for i, (d, s) in enumerate(zip(tiny_dirs * 2, (GOOD, WORSE, BETTER)))]
    return url, made, tmp_path / "promotions.jsonl"


def test_concurrent_promoters_in_separate_processes_never_collide(versions, tmp_path):
    url, (v1, v2, v3), log_path = versions
    name = v1.name
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    before = len(read_log(client, name))
    procs = [subprocess.Popen([sys.executable, "-c", PROMOTER, url, name, str(v.version), str(log_path), f"p{v.version}"],
                              env={**os.environ, "PYTHONPATH": os.getcwd()}, stderr=subprocess.PIPE, text=True)
             for v in (v1, v2, v3)]
    for p in procs:
        assert p.wait(timeout=180) == 0, p.stderr.read()[-2000:]
    everything = read_log(client, name)
    events = everything[before:]
    seqs = [e.seq for e in everything]
    assert len(events) == 9 and seqs == sorted(set(seqs))  # nine promotions, nine distinct entries, none overwritten
    local = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [e["seq"] for e in local] == seqs[before:]  # the local log agrees, entry by entry
    # each event's `previous` is the champion the one before it set: no promotion read a stale champion
    assert all(b.previous == a.version for a, b in zip(events, events[1:]))
    assert int(client.get_model_version_by_alias(name, "champion").version) == events[-1].version
    assert not [m for m in client.search_registered_models() if m.name.endswith(".promotion-lock")]  # lock released


def test_an_alias_moved_in_the_ui_is_audited_and_rollback_follows_it(versions):
    from mlflow.tracking import MlflowClient

    url, (v1, v2, v3), log_path = versions
    name, client = v1.name, MlflowClient(url)
    promote(url, name, v1.version, why="first", log_path=log_path)
    client.set_registered_model_alias(name, "champion", str(v3.version))  # what the MLflow UI does
    with champion_lock(client, name, "test"):
        event = audit(client, name, log_path)
        assert audit(client, name, log_path) is None  # once logged, the log agrees
    assert event.action == "external" and (event.previous, event.version) == (v1.version, v3.version)
    assert champion_history(read_log(client, name))[-2:] == [v1.version, v3.version]
    # a move outside pluto that nobody audited is picked up by the next change, so rollback still works
    client.set_registered_model_alias(name, "champion", str(v2.version))
    back = rollback(url, name, why="the UI change was a mistake", log_path=log_path)
    assert [e.action for e in read_log(client, name)][-2:] == ["external", "rollback"] and back.version == v3.version


def test_a_held_lock_is_a_clear_error_naming_its_holder(promo_mlflow):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(promo_mlflow.url)
    with champion_lock(client, "pluto-tiny", "someone-else"):
        with pytest.raises(PlutoError, match="being changed by someone-else"):
            with champion_lock(client, "pluto-tiny", "me", timeout_s=0.5):
                pass


def test_pluto_promote_shows_the_gate_and_needs_force_to_override_it(versions, tmp_path):
    url, (v1, v2, v3), _ = versions
    env = {**os.environ, "PLUTO_MLFLOW__TRACKING_URI": url, "PLUTO_PATHS__WORK_DIR": str(tmp_path / "work")}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "pluto.cli", *args], env=env, capture_output=True, text=True)

    first = cli("promote", v1.name, str(v3.version), "--why", "first")  # BETTER: passes whoever is champion now
    assert first.returncode == 0 and "gate: pass" in first.stdout
    blocked = cli("promote", v1.name, str(v2.version), "--why", "try")
    assert blocked.returncode != 0 and "gate: BLOCK" in blocked.stdout and "--force" in blocked.stderr + blocked.stdout
    forced = cli("promote", v1.name, str(v2.version), "--why", "hotfix", "--force")
    assert forced.returncode == 0, forced.stderr
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    last = read_log(client, v1.name)[-1]
    assert last.action == "force" and last.version == v2.version and "forced over the gate" in last.why
    again = cli("promote", v1.name, str(v2.version), "--why", "again")  # the champion: no second event
    assert again.returncode == 0 and "already is the champion" in again.stdout and read_log(client, v1.name)[-1] == last
    client.set_registered_model_alias(v1.name, "champion", str(v1.version))  # what the MLflow UI does
    audited = cli("registry", "audit")  # every registered model, none of the locks
    assert audited.returncode == 0, audited.stderr
    assert f"{v1.name}: champion moved outside pluto, v{v2.version} -> v{v1.version}" in audited.stdout
    assert LOCK_SUFFIX not in audited.stdout


HOLDER = """
import os, signal, sys
from mlflow.tracking import MlflowClient
from pluto.registry.promotion import champion_lock
with champion_lock(MlflowClient(sys.argv[1]), sys.argv[2], "doomed"):
    os.kill(os.getpid(), signal.SIGKILL)  # dies holding the lock: no release
"""


def test_a_lock_whose_holder_is_gone_is_broken_and_only_its_own(promo_mlflow, caplog):
    """A holder killed on this host is seen dead at once; one elsewhere, after stale_s; a lock that another
    process is already breaking (its break marker) is left to it; and a holder never deletes a lock not its own."""
    import time

    from mlflow.tracking import MlflowClient

    from pluto.registry.promotion import _lock_tags

    url, model = promo_mlflow.url, "lock-test"
    client, lock = MlflowClient(url), f"lock-test{LOCK_SUFFIX}"
    done = subprocess.run([sys.executable, "-c", HOLDER, url, model], env={**os.environ, "PYTHONPATH": os.getcwd()},
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == -9 and _lock_tags(lock, client)["pluto.lock_holder"] == "doomed", done.stderr[-2000:]
    started = time.monotonic()
    with champion_lock(client, model, "next", timeout_s=30):
        assert _lock_tags(lock, client)["pluto.lock_holder"] == "next"
    assert time.monotonic() - started < 30 and "breaking the lock of doomed: its process" in caplog.text
    assert _lock_tags(lock, client) is None

    old = {"pluto.lock_holder": "elsewhere", "pluto.lock_token": "t0", "pluto.lock_process": "other-host|pid:[1]|7",
           "pluto.lock_at": f"{time.time() - 3600:.3f}"}
    client.create_registered_model(lock, tags=old)
    client.create_registered_model(f"{lock}.break-t0", tags={"pluto.lock_at": f"{time.time():.3f}"})  # a breaker at work
    with pytest.raises(PlutoError, match="being changed by elsewhere"):
        with champion_lock(client, model, "me", timeout_s=1):
            pass
    assert _lock_tags(lock, client)["pluto.lock_token"] == "t0"
    client.delete_registered_model(f"{lock}.break-t0")
    with champion_lock(client, model, "me", timeout_s=10):  # stale (an hour old, another host): broken
        client.delete_registered_model(lock)  # as if this holder overran stale_s and another took the lock
        client.create_registered_model(lock, tags={**old, "pluto.lock_token": "t1", "pluto.lock_at": f"{time.time():.3f}"})
    assert _lock_tags(lock, client)["pluto.lock_token"] == "t1"  # not released by the previous holder
    client.delete_registered_model(lock)


def test_a_change_cut_short_is_completed_and_a_removed_alias_is_logged(versions, monkeypatch):
    """The event is recorded before the alias moves: when MLflow fails in between, the next audit completes
    the recorded change (not an `external` one). An alias removed in the UI is logged, and rollback restores."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    url, (v1, v2, _), log_path = versions
    name, client = v1.name, MlflowClient(url)
    promote(url, name, v1.version, why="base", log_path=log_path)
    real = MlflowClient.set_registered_model_alias

    def outage(self, *args, **kwargs):
        raise MlflowException("injected: MLflow went away")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", outage)
    with pytest.raises(PlutoError, match="is recorded, but MLflow failed before the alias moved"):
        promote(url, name, v2.version, why="cut short", log_path=log_path)
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", real)
    cut = read_log(client, name)[-1]
    assert (cut.version, cut.previous) == (v2.version, v1.version) and current_version(client, name) == v1.version
    assert audit_models(url, log_path, [name]) == {name: cut}
    assert current_version(client, name) == v2.version and read_log(client, name)[-1] == cut  # completed as recorded

    client.delete_registered_model_alias(name, "champion")  # the UI removes the alias
    back = rollback(url, name, why="alias removed by mistake", log_path=log_path)
    assert [(e.action, e.version) for e in read_log(client, name)][-2:] == [("external", None), ("rollback", v2.version)]
    assert back.version == v2.version and current_version(client, name) == v2.version
