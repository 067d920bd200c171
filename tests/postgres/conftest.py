"""The team MLflow server for real: Debian's PostgreSQL (run as its own OS user), moto for S3, and
`mlflow server` with basic auth started with mlflow/docker-compose.yml's arguments, all on free
127.0.0.1 ports and stopped at the end of the session.

PostgreSQL missing is a failure (`make engines` installs it), never a skip. Every secret (database,
admin and user passwords, Flask key) is drawn per session and reaches the processes through their
environment only, as the compose file passes them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pluto.services import LOOPBACK, Service, free_port, start_mlflow
from tests.chain.conftest import tiny_dirs  # noqa: F401 - the fixture: two saved pluto_tiny models
from tests.conftest import TEST_AWS_KEY, TEST_AWS_SECRET, basic_auth_env
from tests.train.conftest import tiles_manifest, tiny_config  # noqa: F401 - the fixtures: CMU tiles, a CPU-sized TrainConfig

REPO = Path(__file__).resolve().parents[2]
PG_OS_USER = "postgres"  # PostgreSQL refuses to run as root
TEAM_USER = "pluto-ci"  # the account the platform logs in with: not an admin, as a team's CI would have


def pg_bindir() -> Path:
    """The newest Debian PostgreSQL's binaries (/usr/lib/postgresql/<major>/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parents[1].name))
    if not found:
        pytest.fail("PostgreSQL is not installed: `make engines` installs it (mlflow/install-postgres-debian.sh)")
    return found[-1].parent


@contextmanager
def postgres_cluster(db_password: str) -> Iterator[str]:
    """initdb a cluster in a temp dir, run it on a free 127.0.0.1 port with a `mlflow` role and
    database (password login over TCP, as the compose file's); yields the SQLAlchemy URI."""
    bindir, as_user = pg_bindir(), PG_OS_USER if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="pluto-pg-"))  # not under pytest's tmp: the postgres user must reach it
    data, port = root / "data", free_port()
    if as_user:
        shutil.chown(root, as_user)

    def pg(*args: str) -> None:
        out = subprocess.run([str(bindir / args[0]), *args[1:]], user=as_user, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"{args[0]} failed: {out.stdout[-2000:]}{out.stderr[-2000:]}"

    try:
        pg("initdb", "-D", str(data), "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync")
        # fsync off: a test database, thrown away at the end (speed on a shared disk)
        pg("pg_ctl", "-D", str(data), "-l", str(root / "postgres.log"), "-w", "-t", "60", "start",
           "-o", f"-c listen_addresses={LOOPBACK} -p {port} -k {data} -c fsync=off")
        try:
            import psycopg2
            from psycopg2 import sql

            conn = psycopg2.connect(host=str(data), port=port, user="postgres", dbname="postgres")
            try:
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute(sql.SQL("CREATE ROLE mlflow LOGIN PASSWORD {}").format(sql.Literal(db_password)))
                    cur.execute("CREATE DATABASE mlflow OWNER mlflow")
            finally:
                conn.close()
            yield f"postgresql://mlflow:{db_password}@{LOOPBACK}:{port}/mlflow"
        finally:
            pg("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class TeamServer:
    """A running team server: its URL, process, backend and artifact store, and the secrets it was given."""

    url: str
    service: Service
    backend_uri: str
    artifacts_destination: str
    s3_endpoint: str
    env: dict[str, str]  # what the server got in its environment, as compose's `environment:`
    user_password: str  # TEAM_USER's

    @contextmanager
    def as_admin(self) -> Iterator[Any]:
        """MLflow's auth client (users, passwords), logged in as the admin through the standard variables."""
        from mlflow.server import get_app_client

        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_USERNAME", "admin")
            mp.setenv("MLFLOW_TRACKING_PASSWORD", self.env["MLFLOW_AUTH_ADMIN_PASSWORD"])
            yield get_app_client("basic-auth", tracking_uri=self.url)

    def query(self, statement: str) -> list[tuple]:
        """Rows of one SQL statement on the backend store (what the server wrote to PostgreSQL)."""
        import psycopg2

        conn = psycopg2.connect(self.backend_uri)
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
                return cur.fetchall()
        finally:
            conn.close()


@pytest.fixture(scope="session")
def team_mlflow(tmp_path_factory, moto_server) -> Iterator[TeamServer]:
    """PostgreSQL backend store, S3 (moto) artifacts proxied by the server, basic auth with a fresh
    admin and a non-admin TEAM_USER; the same `mlflow server` flags and variables as the compose file."""
    import boto3

    home = tmp_path_factory.mktemp("team-mlflow")
    bucket = f"pluto-mlflow-{secrets.token_hex(4)}"
    boto3.client("s3", endpoint_url=moto_server.url, region_name="us-east-1", aws_access_key_id=TEST_AWS_KEY,
                 aws_secret_access_key=TEST_AWS_SECRET).create_bucket(Bucket=bucket)
    auth_env, _ = basic_auth_env(home, secrets.token_urlsafe(16))  # the committed config; only the user store moves
    env = {"AWS_ACCESS_KEY_ID": TEST_AWS_KEY, "AWS_SECRET_ACCESS_KEY": TEST_AWS_SECRET, "MLFLOW_S3_ENDPOINT_URL": moto_server.url,
           **auth_env}
    destination = f"s3://{bucket}/artifacts"
    with postgres_cluster(secrets.token_urlsafe(16)) as backend_uri:
        svc = start_mlflow(home, artifacts_destination=destination, backend_store_uri=backend_uri, app_name="basic-auth", env=env)
        try:
            server = TeamServer(svc.url, svc, backend_uri, destination, moto_server.url, env, secrets.token_urlsafe(16))
            with server.as_admin() as auth:
                auth.create_user(TEAM_USER, server.user_password)
            yield server
        finally:
            svc.stop()


@pytest.fixture()
def team_login(team_mlflow, monkeypatch) -> tuple[str, str]:
    """TEAM_USER's login in the standard MLflow variables, as a job gets it from its secret."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", TEAM_USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", team_mlflow.user_password)
    return TEAM_USER, team_mlflow.user_password
