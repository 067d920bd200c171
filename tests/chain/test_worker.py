"""A real Prefect worker runs prefect.yaml's deployments, on a tiny config, against servers on 127.0.0.1.

One scenario, observed through the Prefect API: `prefect deployment run retrain/weekly` starts
retrain A on the process pool's worker; once A has ingested, a slide lands and the sensor emits
`pluto.slides.changed`; the `on-new-slides` trigger creates retrain B, which waits in the shared
`retrain` queue (not cancelled) and starts after A. The sensor's seen listing is written by each
successful retrain, not by the event. The library's log lines reach each flow run's logs (API and
the UI's flow-run page in headless Chromium), and the QC artifact summarises.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).parent / "prefect")


def _call(fn):
    from prefect.client.orchestration import get_client

    async def main():
        async with get_client() as client:
            return await fn(client)

    return asyncio.run(main())


def _read_run(run_id: str):
    async def read(client):
        return await client.read_flow_run(run_id)

    return _call(read)


def _wait(what: str, probe, timeout_s: float, log_path: Path, every_s: float = 0.5):
    """`probe()` until it returns something truthy; fail with the worker's log tail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := probe():
            return found
        time.sleep(every_s)
    pytest.fail(f"{what} within {timeout_s:.0f} s; worker log tail:\n{log_path.read_text(errors='replace')[-4000:]}")


def _final(run_id: str):
    run = _read_run(run_id)
    return run if run.state and run.state.is_final() else None


def _child_run(parent_id: str, flow_name: str, completed: bool = False):
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterParentFlowRunId

    async def read(client):
        runs = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])),
        )
        return [r for r in runs if not completed or r.state.is_completed()]

    found = _call(read)
    return found[0] if found else None


def _tiny_config(work: Path, src: Path, mlflow_url: str) -> dict:
    from dataclasses import asdict

    from pluto.ssl import ssl_preset

    ssl = {**asdict(ssl_preset("demo")), "global_crop_px": 48, "local_crop_px": 32, "n_local_crops": 2,
           "head_hidden_dim": 64, "head_bottleneck_dim": 32, "n_prototypes": 256, "ibot_n_prototypes": 256,
           "koleo_weight": 0.0, "kde_weight": 0.05}
    return {
        "paths": {"work_dir": str(work)},
        "mlflow": {"tracking_uri": mlflow_url, "experiment": "chain-worker"},
        "tiling": {"mpps": [1.0], "tile_pxs": [112]},
        "train": {"arch": "pluto_tiny", "ssl": ssl, "steps": 2, "batch_per_gpu": 2, "global_batch": 2,
                  "precision": "fp32", "num_workers": 0, "ckpt_every": 2},
        "eval": {"preset": "quick", "baselines": False, "n_seeds": 1, "cache_dir": str(work / "embeddings")},
        "chain": {"ingest_prefix": str(src), "dask_workers": 1, "task_retries": 0},
    }


@pytest.fixture(scope="module")
def scenario(deployed, tmp_path_factory, shared_data):
    """Runs the scenario once with a worker on `pluto-local`; returns what was observed along the way."""
    from prefect.variables import Variable

    from flows.sensor import new_slides_sensor, seen_variable
    from pluto.data_version import source_fingerprint
    from pluto.services import start_mlflow

    tmp = tmp_path_factory.mktemp("worker")
    src = tmp / "ingest"
    src.mkdir()
    shutil.copy(shared_data / "wsi" / "CMU-1-Small-Region.svs", src)
    mlflow = start_mlflow(tmp / "mlflow")
    config_file = tmp / "pluto.yaml"
    config_file.write_text(yaml.safe_dump(_tiny_config(tmp / "work", src, mlflow.url)))
    env = {**os.environ, "PREFECT_API_URL": deployed, "PLUTO_CONFIG": str(config_file), "PREFECT_WORKER_QUERY_SECONDS": "1"}
    log_path = tmp / "worker.log"
    with open(log_path, "ab") as fh:
        worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "pluto-local", "--type", "process"],
                                  cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    sensor_config = {"chain": {"ingest_prefix": str(src)}}  # the sensor runs here, the worker's settings name the same prefix
    seen = seen_variable(str(src))
    seen_at: dict[str, str | None] = {}
    try:
        out = subprocess.run([PREFECT, "deployment", "run", "retrain/weekly"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        a_id = re.search(r"UUID: ([0-9a-f-]{36})", out.stdout).group(1)
        first_listing = source_fingerprint(str(src))
        _wait("retrain A ingested", lambda: _child_run(a_id, "ingest", completed=True), 240, log_path)

        shutil.copy(shared_data / "openslide_fixtures" / "small.svs", src)  # lands while A runs
        second_listing = source_fingerprint(str(src))
        emitted = new_slides_sensor(sensor_config)
        seen_at["event"] = Variable.get(seen, default=None)
        b_id = str(_wait("the trigger's retrain B", lambda: _triggered_run(), 60, log_path).id)
        b_waiting = _read_run(b_id).state
        emitted_again = new_slides_sensor(sensor_config)  # B waits and will list the prefix: no second event
        a_state_then = _read_run(a_id).state

        a_run = _wait("retrain A final", lambda: _final(a_id), 600, log_path, every_s=0.2)
        seen_at["A"] = Variable.get(seen, default=None)
        b_run = _wait("retrain B final", lambda: _final(b_id), 600, log_path)
        seen_at["B"] = Variable.get(seen, default=None)
        after = new_slides_sensor(sensor_config)
        yield {
            "a": a_run, "b": b_run, "b_waiting": b_waiting, "a_state_then": a_state_then, "emitted": emitted,
            "emitted_again": emitted_again, "after": after, "seen": seen_at, "listings": (first_listing, second_listing),
            "qc_a": _child_run(a_id, "qc"), "qc_b": _child_run(b_id, "qc"), "work": tmp / "work", "log": log_path, "ui": deployed.removesuffix("/api"),
        }
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        mlflow.stop()


def _triggered_run():
    from prefect.client.schemas.filters import FlowRunFilter

    async def read(client):
        d = await client.read_deployment_by_name("retrain/on-new-slides")
        return await client.read_flow_runs(flow_run_filter=FlowRunFilter(deployment_id={"any_": [d.id]}))

    runs = _call(read)
    return runs[0] if runs else None


def test_deployment_run_and_triggered_run_complete_on_the_worker(scenario):
    a, b = scenario["a"], scenario["b"]
    assert a.state.is_completed(), (a.state, scenario["log"].read_text(errors="replace")[-3000:])
    assert b.state.is_completed(), (b.state, scenario["log"].read_text(errors="replace")[-3000:])
    assert a.created_by is None or a.created_by.type != "AUTOMATION"
    assert b.created_by.type == "AUTOMATION" and b.parameters == {"config": {}, "launcher": "local", "nproc": 1}


def test_slide_landing_mid_retrain_queues_a_run_that_starts_after_it(scenario):
    a, b = scenario["a"], scenario["b"]
    assert scenario["emitted"] is True
    assert scenario["a_state_then"].is_running()  # A was still running when B was created and checked
    assert scenario["b_waiting"].type.value == "SCHEDULED"  # queued behind A, not cancelled
    assert scenario["emitted_again"] is False  # the waiting run covers the new slide: no duplicate
    assert b.start_time >= a.end_time  # one retrain at a time, B after A


def test_slides_are_seen_only_when_a_run_covering_them_succeeds(scenario):
    first, second = scenario["listings"]
    assert first != second
    assert scenario["seen"] == {"event": None, "A": first, "B": second}
    assert scenario["after"] is False  # B covered the new slide: nothing left to trigger


def test_library_log_lines_reach_the_flow_runs_logs(scenario):
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    qc = scenario["qc_a"]

    async def logs(client):
        return await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[qc.id])))

    lines = _call(logs)
    by_logger = {(entry.name, entry.task_run_id is not None) for entry in lines}
    # run_qc in a Dask worker (a task run), the fan-out merge in the flow itself
    assert ("pluto.qc.run", True) in by_logger and ("pluto.fanout", False) in by_logger, sorted(by_logger)
    assert any(entry.name == "pluto.qc.run" and "cells kept" in entry.message for entry in lines)


def test_qc_artifact_summarises_the_cohort(scenario):
    import pandas as pd

    async def artifacts(client):
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        return await client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[scenario["qc_b"].id])))

    (art,) = [a for a in _call(artifacts) if a.key == "qc-summary"]
    summary = pd.read_parquet(scenario["work"] / "qc" / "qc_summary.parquet")  # B's: the last QC of the work dir
    n_ok = int((summary["status"] == "ok").sum())
    assert f"{len(summary)} slides: {n_ok} ok, {len(summary) - n_ok} flagged" in art.data
    assert "[MLflow qc run](http://127.0.0.1:" in art.data


def test_flow_run_page_in_headless_chromium_shows_the_library_log_lines(scenario, tmp_path):
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterName

    qc = scenario["qc_a"]

    async def logs(client):
        return await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[qc.id]),
                                                           name=LogFilterName(any_=["pluto.qc.run", "pluto.fanout"])))

    messages = sorted({entry.message for entry in _call(logs)})
    assert messages
    text = _page_text(f"{scenario['ui']}/runs/flow-run/{qc.id}", tmp_path / "chromium", messages)
    assert all(m in text for m in messages), (messages, text[-2000:])


def _page_text(url: str, profile: Path, expect: list[str], timeout_s: float = 60.0) -> str:
    """The page's rendered text (`innerText`) once it holds every string of `expect`, else at `timeout_s`.

    Driven over the DevTools protocol rather than `--dump-dom`: the UI fetches the logs after the
    page loads and draws them in a virtual scroller, which `--dump-dom` captures still empty. The
    tall window keeps the whole log list in view, so the scroller renders it.
    """
    from websockets.sync.client import connect

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium not installed: apt-get install -y chromium")
    profile.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             f"--user-data-dir={profile}", "--window-size=1600,2400", "--remote-debugging-address=127.0.0.1",
                             "--remote-debugging-port=0", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    try:
        port_file = profile / "DevToolsActivePort"  # Chromium writes the port it picked here
        while not (port_file.is_file() and port_file.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{int(port_file.read_text().split()[0])}/json/list", timeout=10) as resp:
            page = next(target for target in json.load(resp) if target["type"] == "page")
        with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            def call(call_id: int, method: str, **params) -> dict:
                ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
                while (msg := json.loads(ws.recv())).get("id") != call_id:
                    pass  # events and other replies
                return msg["result"]

            call(1, "Page.navigate", url=url)
            text, call_id = "", 2
            while time.monotonic() < deadline and not all(e in text for e in expect):
                time.sleep(0.5)
                text = call(call_id, "Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                            returnByValue=True)["result"].get("value", "")
                call_id += 1
            return text
    finally:
        proc.terminate()
        proc.wait(timeout=10)
