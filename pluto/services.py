"""Local service processes the platform talks to: MLflow tracking server, Prefect server and an S3 API (moto).

Used by `make demo`, the CLI (`pluto services up`) and the test fixtures, so all three start the
same real servers the same way. Everything binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from pluto.errors import PlutoError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout_s: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Block until something accepts connections on host:port; fail early if `proc` died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise PlutoError(f"server on {host}:{port} exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise PlutoError(f"server on {host}:{port} did not start within {timeout_s:.0f} s")


@dataclass
class Service:
    """A running server process and the URL to reach it."""

    name: str
    url: str
    proc: subprocess.Popen
    log_path: Path

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _bin(name: str) -> str:
    """Console script next to the running interpreter (the venv), else on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise PlutoError(f"{name}: executable not found next to {sys.executable} or on PATH")
    return found


def _spawn(name: str, cmd: list[str], host: str, port: int, log_dir: Path, env: dict[str, str] | None, timeout_s: float) -> Service:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    full_env = {**os.environ, **(env or {})}
    with open(log_path, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
    try:
        wait_for_port(host, port, timeout_s=timeout_s, proc=proc)
    except PlutoError as exc:
        proc.kill()
        tail = log_path.read_text(errors="replace")[-2000:]
        raise PlutoError(f"{exc}; last log lines from {log_path}:\n{tail}") from exc
    svc = Service(name=name, url=f"http://{host}:{port}", proc=proc, log_path=log_path)
    log.info("%s listening on %s (log: %s)", name, svc.url, log_path)
    return svc


def start_moto(port: int | None = None, host: str = LOOPBACK, log_dir: Path = Path("work/logs")) -> Service:
    """A real S3 API (moto server) on host:port; state lives in memory for the process's life."""
    port = port or free_port(host)
    return _spawn("moto", [_bin("moto_server"), "-H", host, "-p", str(port)], host, port, log_dir, None, 60)


def start_mlflow(
    store_dir: Path,
    port: int | None = None,
    host: str = LOOPBACK,
    artifacts_destination: str | None = None,
    env: dict[str, str] | None = None,
    log_dir: Path | None = None,
    backend_store_uri: str | None = None,
    app_name: str | None = None,
) -> Service:
    """MLflow tracking server: sqlite backend + proxied artifact store under `store_dir` by default.

    `artifacts_destination` may be an s3:// URI (credentials and endpoint from `env`/AWS config);
    `backend_store_uri` a postgresql:// one and `app_name` "basic-auth", as a team's server
    (mlflow/docker-compose.yml) runs.
    """
    port = port or free_port(host)
    store_dir = Path(store_dir).resolve()
    store_dir.mkdir(parents=True, exist_ok=True)
    dest = artifacts_destination or (store_dir / "artifacts").as_uri()
    cmd = [
        _bin("mlflow"), "server",
        "--host", host, "--port", str(port),
        "--backend-store-uri", backend_store_uri or f"sqlite:///{store_dir / 'mlflow.db'}",
        "--artifacts-destination", dest, "--serve-artifacts",
        "--workers", "1",
        *(["--app-name", app_name] if app_name else []),
    ]
    quiet = {"MLFLOW_ENABLE_TELEMETRY": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    return _spawn("mlflow", cmd, host, port, log_dir or store_dir, {**quiet, **(env or {})}, 180)


def start_prefect(home: Path, port: int | None = None, host: str = LOOPBACK) -> Service:
    """A Prefect server (API + UI) whose database lives under `home` (PREFECT_HOME)."""
    port = port or free_port(host)
    env = {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_API_URL": f"http://{host}:{port}/api"}
    cmd = [_bin("prefect"), "server", "start", "--host", host, "--port", str(port)]
    return _spawn("prefect", cmd, host, port, home, env, 240)


PREFECT_PORT = 4200  # Prefect's own default, so `prefect` commands in a new shell find the demo's server


def loopback_port(url: str) -> int:
    """The port of an http://127.0.0.1:PORT URL: the embedded servers bind only there."""
    parsed = urlparse(url)
    if parsed.scheme != "http" or parsed.hostname not in (LOOPBACK, "localhost") or not parsed.port:
        raise PlutoError(f"{url}: the embedded servers run at http://127.0.0.1:PORT; point mlflow.tracking_uri there "
                         "or at your team's server (which `pluto services up` does not start)")
    return parsed.port


def _require_free(port: int, what: str, setting: str) -> None:
    with socket.socket() as sock:
        if sock.connect_ex((LOOPBACK, port)) == 0:
            raise PlutoError(f"{LOOPBACK}:{port} is already in use, so {what} cannot start there (is a demo or "
                             f"`pluto services up` still running?); stop it or set {setting} to another port")


def start_services(work: Path, mlflow_url: str, prefect_port: int = PREFECT_PORT) -> list[Service]:
    """MLflow and Prefect on fixed 127.0.0.1 ports, state under `work` (the embedded stores need no S3).

    Fixed ports, not free ones: the CLI in a new shell, `mlflow models serve` and the README all name
    the same tracking URI, and restarting the services on the same work dir serves the same runs.
    """
    mlflow_port = loopback_port(mlflow_url)
    _require_free(mlflow_port, "MLflow", "PLUTO_MLFLOW__TRACKING_URI")
    _require_free(prefect_port, "the Prefect server", "--prefect-port")
    services: list[Service] = []
    try:
        services.append(start_mlflow(work / "mlflow", port=mlflow_port, log_dir=work / "logs"))
        services.append(start_prefect(work / "prefect", port=prefect_port))
    except BaseException:
        for svc in reversed(services):
            svc.stop()
        raise
    return services
