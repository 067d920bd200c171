"""Fault-injection fixtures. Each fixture here is self-contained; add new ones below (append-only)."""

from __future__ import annotations

from pathlib import Path

import pytest


class RestartableMoto:
    """A moto S3 server of the test's own on a fixed 127.0.0.1 port, which the test may stop and start.

    moto keeps its state in memory: a restarted server is empty, so a test re-creates buckets and
    re-uploads objects after `start()` (the same bytes give the same ETags, as on a real bucket
    that stayed up). Each start logs to its own folder, so one server life's requests can be counted.
    """

    def __init__(self, log_root: Path) -> None:
        from pluto.services import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_root = log_root
        self.lives = 0
        self.svc = None
        self.start()

    def start(self):
        from pluto.services import start_moto

        self.lives += 1
        self.svc = start_moto(port=self.port, log_dir=self.log_root / f"life-{self.lives}")
        return self

    def stop(self) -> None:
        if self.svc is not None:
            self.svc.stop()
            self.svc = None

    def log_text(self) -> str:
        return self.svc.log_path.read_text(errors="replace") if self.svc else ""


@pytest.fixture()
def restartable_moto(tmp_path_factory):
    moto = RestartableMoto(tmp_path_factory.mktemp("moto-restartable"))
    yield moto
    moto.stop()


@pytest.fixture(scope="session")
def generated_cohort(tmp_path_factory) -> list[Path]:
    """60 distinct 1024-px 3-level JPEG pyramids of real tissue (bench.bench_ingest_load.make_cohort), ~2 s."""
    from bench.bench_ingest_load import make_cohort

    return make_cohort(tmp_path_factory.mktemp("cohort"), 60)
