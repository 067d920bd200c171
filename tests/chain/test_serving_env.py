"""Serving from the registry in an environment MLflow builds itself (`--env-manager virtualenv`).

The CI tests serve with `--env-manager local` (the venv already holds everything); this one proves
the model's own requirements are enough: `mlflow models serve` creates a fresh virtualenv (pyenv's
Python of the version the model records, pip with the machine's index settings), installs only the
model's requirements (no pluto package) and serves the code that travels in the model.
`mlflow models predict --env-manager virtualenv` is not used: it gives pyenv a fresh root and so
builds Python from source, downloaded from python.org.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.chain.test_registry import GOOD, _register

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.skipif(shutil.which("pyenv") is None, reason="--env-manager virtualenv needs pyenv on PATH")
def test_champion_serves_from_a_virtualenv_built_from_the_models_requirements(mlflow_server, tiny_dirs, tmp_path):
    import mlflow

    from pluto.services import free_port, wait_for_port

    rec = _register(mlflow_server.url, tiny_dirs[0], GOOD, "key-venv", tmp_path)
    uri, port, envs = f"models:/{rec.name}/{rec.version}", free_port(), tmp_path / "envs"  # a fresh env root: nothing reused
    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url, "MLFLOW_ENV_ROOT": str(envs),
           "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}"}
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen([str(venv_bin / "mlflow"), "models", "serve", "--env-manager", "virtualenv", "-m", uri,
                                 "-h", "127.0.0.1", "-p", str(port), "-w", "1"], stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        try:
            wait_for_port("127.0.0.1", port, timeout_s=1200, proc=proc)  # building the env: minutes
        except Exception:
            pytest.fail((tmp_path / "serve.log").read_text()[-4000:])
        batch = np.random.default_rng(1).standard_normal((2, 3, 112, 112)).astype(np.float32)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps({"inputs": batch.tolist()}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            served = np.asarray(json.loads(resp.read())["predictions"], dtype=np.float32)
    finally:
        os.killpg(proc.pid, 15)  # mlflow execs the server inside the env's shell: end the whole group
        proc.wait(timeout=60)
    [venv] = [p for p in envs.iterdir() if (p / "bin" / "python").exists()]
    probe = "import importlib.util as u, torch; print(u.find_spec('pluto') is None, torch.__version__)"
    no_pluto, torch_version = subprocess.run([str(venv / "bin" / "python"), "-I", "-c", probe], capture_output=True, text=True,
                                             check=True, cwd=tmp_path).stdout.split()
    assert no_pluto == "True"  # the served code came from the model's code/, not an installed package
    assert torch_version.split("+")[0] == __import__("torch").__version__.split("+")[0]
    mlflow.set_tracking_uri(mlflow_server.url)
    here = np.asarray(mlflow.pyfunc.load_model(uri).predict(batch), dtype=np.float32)
    assert served.shape == (2, 96)
    np.testing.assert_allclose(served, here, rtol=1e-4, atol=1e-5)
