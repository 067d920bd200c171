"""Security of a demo-sized retrain (chain_story) run with the test AWS credentials in its environment.

Everything MLflow holds (params, tags, metric names, every artifact downloaded, plus the raw
store), everything the Prefect server holds (flow-run logs and artifacts via the API, plus its
database) and every file of the work dir are searched for the credentials and for the slide's
label and macro images; neither is found. Servers started by pluto.services listen on 127.0.0.1
only, and the MLflow compose file documents its authentication.
"""

from __future__ import annotations

import asyncio
import base64
import configparser
import io
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

import chain_story

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp"}
DATA_URI = re.compile(rb"data:image/[a-z+]+;base64,([A-Za-z0-9+/=]+)")


@pytest.fixture(scope="module")
def story(request, tmp_path_factory, shared_data, moto_server) -> chain_story.Story:
    return chain_story.story(request, tmp_path_factory, shared_data, moto_server.url)


@pytest.fixture(scope="module")
def mlflow_held(story, tmp_path_factory) -> tuple[list[str], Path]:
    """(texts of every run, logged model and model version; folder with every artifact downloaded)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(story.mlflow_url)
    dest = tmp_path_factory.mktemp("mlflow-artifacts")
    texts: list[str] = []
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    for run in client.search_runs(exp_ids, max_results=1000):
        d = run.data
        texts += [run.info.run_name or "", *d.params, *d.params.values(), *d.tags, *d.tags.values(), *d.metrics]
        (out := dest / "runs" / run.info.run_id).mkdir(parents=True)
        client.download_artifacts(run.info.run_id, "", str(out))
    for model in client.search_logged_models(exp_ids):
        texts += [*model.params, *map(str, model.params.values()), *model.tags, *map(str, model.tags.values())]
        (out := dest / "models" / model.model_id).mkdir(parents=True)
        mlflow.artifacts.download_artifacts(artifact_uri=model.artifact_location, dst_path=str(out), tracking_uri=story.mlflow_url)
    for mv in client.search_model_versions("name = 'pluto-tiny'"):
        texts += [mv.source or "", mv.description or "", *mv.tags, *mv.tags.values()]
    return texts, dest


@pytest.fixture(scope="module")
def prefect_held(story) -> list[str]:
    """Every flow-run log message, flow-run parameter set and artifact on the story's Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def read():
        async with get_client() as client:
            logs, offset = [], 0
            while page := await client.read_logs(offset=offset, limit=200):
                logs += [entry.message for entry in page]
                offset += len(page)
            runs = await client.read_flow_runs()
            artifacts = await client.read_artifacts()
            return logs, [repr(r.parameters) for r in runs], [f"{a.data} {a.description}" for a in artifacts]

    with temporary_settings(updates={PREFECT_API_URL: story.prefect_api}):
        logs, params, artifacts = asyncio.run(read())
    assert len(logs) > 50 and params and artifacts  # the scan has something to scan
    return [*logs, *params, *artifacts]


def _files(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if p.is_file()]


@pytest.mark.slow
def test_no_credentials_anywhere_mlflow_prefect_or_the_work_dir_hold(story, mlflow_held, prefect_held):
    texts, artifact_dir = mlflow_held
    secrets = [story.env["AWS_ACCESS_KEY_ID"], story.env["AWS_SECRET_ACCESS_KEY"]]
    assert len(texts) > 50
    for secret in secrets:
        assert not [t for t in texts if secret in t], "MLflow params/tags/metric names"
        assert not [t for t in prefect_held if secret in t], "Prefect logs/parameters/artifacts"
    files = _files(artifact_dir, story.work, story.mlflow_store, story.prefect_home)
    assert len(files) > 50 and any(p.suffix == ".jsonl" for p in files) and any(p.suffix == ".log" for p in files)
    leaks = [str(p) for p in files for secret in secrets if secret.encode() in p.read_bytes()]
    assert not leaks


def _rgb(data: bytes) -> np.ndarray | None:
    from PIL import Image, UnidentifiedImageError

    try:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    except (UnidentifiedImageError, OSError):
        return None


def _dhash(img: np.ndarray) -> int:
    """64-bit difference hash of the 9x8 grey thumbnail: survives rescaling and recompression."""
    import cv2

    small = cv2.resize(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


def shows(hay: np.ndarray, needle: np.ndarray) -> bool:
    """True when `hay` is `needle` (possibly rescaled: dHash within 6 of 64 bits) or contains it pixel for pixel
    (normalised squared difference of the best template match, at full and half size, below 1e-3)."""
    import cv2

    if bin(_dhash(hay) ^ _dhash(needle)).count("1") <= 6:
        return True
    for scale in (1.0, 0.5):
        tmpl = needle if scale == 1.0 else cv2.resize(needle, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        if tmpl.shape[0] <= hay.shape[0] and tmpl.shape[1] <= hay.shape[1]:
            if cv2.matchTemplate(hay, tmpl, cv2.TM_SQDIFF_NORMED).min() < 1e-3:
                return True
    return False


@pytest.fixture(scope="module")
def label_and_macro(cmu_svs) -> dict[str, np.ndarray]:
    import openslide

    with openslide.OpenSlide(str(cmu_svs)) as slide:
        return {k: np.asarray(slide.associated_images[k].convert("RGB")) for k in ("label", "macro")}


def test_the_image_check_finds_planted_copies(label_and_macro, cmu_svs):
    """The detector is not vacuous: exact, rescaled and embedded copies are caught; the QC thumbnail is not."""
    import cv2

    from pluto.slides import read_thumbnail

    label, macro = label_and_macro["label"], label_and_macro["macro"]
    canvas = np.random.default_rng(0).integers(0, 255, (900, 1500, 3), dtype=np.uint8)
    canvas[100:100 + label.shape[0], 200:200 + label.shape[1]] = label
    assert shows(label, label) and shows(canvas, label)
    assert shows(cv2.resize(macro, None, fx=0.3, fy=0.3, interpolation=cv2.INTER_AREA), macro)
    thumb, _ = read_thumbnail(cmu_svs, 8.0)
    assert not shows(thumb, label) and not shows(thumb, macro) and not shows(canvas, macro)


@pytest.mark.slow
def test_no_artifact_image_is_or_contains_the_label_or_macro(story, mlflow_held, prefect_held, label_and_macro):
    _, artifact_dir = mlflow_held
    images: dict[str, np.ndarray] = {}
    for path in _files(artifact_dir, story.work, story.mlflow_store):
        data = path.read_bytes()
        if path.suffix.lower() in IMAGE_EXTS and (img := _rgb(data)) is not None:
            images[str(path)] = img
        for i, blob in enumerate(DATA_URI.findall(data) if path.suffix in (".html", ".md", ".json", ".svg") else []):
            if (img := _rgb(base64.b64decode(blob))) is not None:
                images[f"{path}#data-uri-{i}"] = img
    for i, text in enumerate(prefect_held):
        for j, blob in enumerate(DATA_URI.findall(text.encode())):
            if (img := _rgb(base64.b64decode(blob))) is not None:
                images[f"prefect#{i}-{j}"] = img
    assert any("thumb" in k for k in images) and any(k.endswith(".png") and "runs" in k for k in images)
    found = [(k, name) for k, img in images.items() for name, secret in label_and_macro.items() if shows(img, secret)]
    assert not found


@pytest.mark.slow
def test_servers_started_by_pluto_services_listen_on_loopback_only(story, moto_server):
    import psutil

    pids = {**story.server_pids, "moto": moto_server.proc.pid}
    for name, pid in pids.items():
        proc = psutil.Process(pid)
        listening = [c.laddr for p in (proc, *proc.children(recursive=True)) for c in p.net_connections("inet")
                     if c.status == psutil.CONN_LISTEN]
        assert listening, f"{name} has no listening socket"
        assert {a.ip for a in listening} == {"127.0.0.1"}, f"{name} listens on {listening}"


def test_local_dask_cluster_listens_on_loopback_only():
    """Only the sockets the cluster opens count: earlier tests in this process may hold their own."""
    import psutil
    from distributed import LocalCluster

    from flows.common import local_cluster_kwargs
    from pluto.config import Settings

    def listening() -> set[tuple[int, str, int]]:
        me = psutil.Process()
        return {(p.pid, c.laddr.ip, c.laddr.port) for p in (me, *me.children(recursive=True))
                for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}

    before = listening()
    with LocalCluster(**{**local_cluster_kwargs(Settings()), "n_workers": 1}) as cluster:
        opened = listening() - before
        ports = {port for _, _, port in opened}
        assert cluster.scheduler.port in ports and int(cluster.dashboard_link.split(":")[2].split("/")[0]) in ports
        assert {ip for _, ip, _ in opened} == {"127.0.0.1"}, opened


def test_mlflow_compose_documents_authentication():
    compose = yaml.safe_load((REPO / "mlflow" / "docker-compose.yml").read_text())
    mlflow_svc = compose["services"]["mlflow"]
    assert "--app-name basic-auth" in " ".join(mlflow_svc["command"].split())
    auth_path = mlflow_svc["environment"]["MLFLOW_AUTH_CONFIG_PATH"]
    assert any(v.startswith("./basic_auth.ini:") and v.split(":")[1] == auth_path for v in mlflow_svc["volumes"])
    ini = configparser.ConfigParser()
    ini.read(REPO / "mlflow" / "basic_auth.ini")
    assert ini["mlflow"]["authorization_function"] == "mlflow.server.auth:authenticate_request_basic_auth"
    assert ini["mlflow"]["default_permission"] == "READ" and ini["mlflow"]["admin_username"]
    for svc in compose["services"].values():
        assert all(str(p).startswith("127.0.0.1:") for p in svc.get("ports", []))  # published on loopback only
        for key, value in (svc.get("environment") or {}).items():
            if any(w in key for w in ("PASSWORD", "SECRET", "ACCESS_KEY")):
                assert str(value).startswith("${"), f"{key} is a literal in the compose file"
    readme = (REPO / "mlflow" / "README.md").read_text()
    assert "MLFLOW_TRACKING_USERNAME" in readme and "basic-auth" in readme
