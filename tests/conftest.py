"""Session fixtures shared by every test area: the bundled real data and real local servers.

Servers bind to 127.0.0.1 on free ports and are stopped at the end of the session; no test sends
traffic anywhere else. Area-specific fixtures live in each tests/<area>/conftest.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("PLUTO_SHARED", REPO.parent / "shared"))

# Test-only S3 credentials: they exist so the security test can search for them in logs/artifacts.
TEST_AWS_KEY = "AKIAPLUTOTESTKEY0001"
TEST_AWS_SECRET = "pluto-test-secret-do-not-log-0001"


DVC_PROJECT_FILES = (".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore", "data.dvc")


def dvc_project_like_the_repository(path: Path) -> Path:
    """A git repository holding this repository's committed DVC files, as a fresh clone has them."""
    import shutil
    import subprocess

    (path / ".dvc").mkdir(parents=True, exist_ok=True)
    for name in DVC_PROJECT_FILES:
        shutil.copyfile(REPO / name, path / name)
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "project"]):
        subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True)
    return path


def pytest_configure(config):
    # A promotion points chain.dvc_project's data.dvc at the champion's data; unset, that is this checkout.
    # Tests (and the processes they start, which inherit the environment) use a scratch project instead.
    if "PLUTO_CHAIN__DVC_PROJECT" not in os.environ:
        import tempfile

        project = dvc_project_like_the_repository(Path(tempfile.mkdtemp(prefix="pluto-dvc-project-")))
        os.environ["PLUTO_CHAIN__DVC_PROJECT"] = config._pluto_dvc_project = str(project)


def pytest_unconfigure(config):
    project = getattr(config, "_pluto_dvc_project", None)
    if project:
        import shutil

        shutil.rmtree(project, ignore_errors=True)
        os.environ.pop("PLUTO_CHAIN__DVC_PROJECT", None)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    data = SHARED / "data"
    if not data.is_dir():
        pytest.fail(f"{data}: bundled data not found; put ../shared beside the checkout or set PLUTO_SHARED")
    return data


@pytest.fixture(scope="session")
def cmu_svs(shared_data: Path) -> Path:
    """Real Aperio slide: 2220x2967, one level, 0.499 um/px, has label/macro/thumbnail images."""
    return shared_data / "wsi" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="session")
def openslide_fixtures(shared_data: Path) -> Path:
    return shared_data / "openslide_fixtures"


@pytest.fixture(scope="session")
def crc_patches(shared_data: Path) -> Path:
    """32 labelled 224-px CRC-VAL-HE-7K patches (8 classes x 4), labels.csv: filename,label,split."""
    return shared_data / "patches_crc_val_he_7k"


@pytest.fixture(scope="session")
def artifact_images(shared_data: Path) -> Path:
    """Pen-marked thumbnails/tiles (histolab, HistoPrep) with labels.csv."""
    return shared_data / "artifacts"


@pytest.fixture()
def aws_env(monkeypatch):
    """Standard AWS variables pointing at the test credentials (never real ones)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_AWS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_AWS_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return {"AWS_ACCESS_KEY_ID": TEST_AWS_KEY, "AWS_SECRET_ACCESS_KEY": TEST_AWS_SECRET, "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """A real S3 API (moto server) on 127.0.0.1; yields the Service (url = endpoint)."""
    from pluto.services import start_moto

    svc = start_moto(log_dir=tmp_path_factory.mktemp("moto-log"))
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server (sqlite + local artifacts) on 127.0.0.1."""
    from pluto.services import start_mlflow

    svc = start_mlflow(tmp_path_factory.mktemp("mlflow-store"))
    yield svc
    svc.stop()


def basic_auth_env(home: Path, admin_password: str) -> tuple[dict[str, str], str]:
    """`mlflow server --app-name basic-auth`'s variables for the committed `mlflow/basic_auth.ini` with its
    user store moved under `home`, and the admin's user name; a fresh Flask secret."""
    import configparser
    import secrets

    ini = configparser.ConfigParser()
    ini.read(REPO / "mlflow" / "basic_auth.ini")
    ini["mlflow"]["database_uri"] = f"sqlite:///{home / 'basic_auth.db'}"
    with open(home / "basic_auth.ini", "w") as fh:
        ini.write(fh)
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(home / "basic_auth.ini"), "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32)}
    return env, ini["mlflow"]["admin_username"]
