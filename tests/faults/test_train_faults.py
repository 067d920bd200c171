"""Training faults (issue 8): MLflow down mid-run, the whole job killed, a full disk at checkpoint time.

Each runs the real trainer on real CRC patches (pluto_tiny, the "tiny" SSL preset) against real
processes on 127.0.0.1. A killed rank is covered by tests/train/test_distributed.py (kill -9 under
torchrun, resume on the uninterrupted loss curve).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from pluto.services import free_port, start_mlflow
from pluto.ssl.config import ssl_preset
from pluto.train.checkpoint import list_checkpoints, load_latest
from pluto.train.config import ClusterSpec, TrainConfig
from pluto.train.launch import LocalLauncher, pid_alive, write_run_config
from pluto.train.trainer import train


def _config(run_dir, data, **changes) -> TrainConfig:
    base = TrainConfig(arch="pluto_tiny", ssl=ssl_preset("tiny"), data=str(data / "images"), data_kind="images",
                       image_mpp=0.5, run_dir=str(run_dir), batch_per_gpu=2, global_batch=4, precision="fp32",
                       num_workers=0, cluster=ClusterSpec(job_name="faults", max_restarts=0))
    return replace(base, **changes)


def _steps_logged(run_dir) -> list[int]:
    return [r["step"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.integration
@pytest.mark.slow  # starts an MLflow server twice (~1 min each on 2 cores)
def test_mlflow_outage_mid_training_loses_no_metric(tmp_path, crc_patches, monkeypatch, caplog):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # as `python -m pluto.train` sets them
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    store, port = tmp_path / "store", free_port()
    servers = [start_mlflow(store, port=port)]
    url = servers[0].url
    steps, down_at, up_at = 6, 2, 4

    def outage(metrics):
        if metrics["step"] == down_at:
            servers[-1].stop()  # the server dies between steps 2 and 3 ...
        if metrics["step"] == up_at:
            servers.append(start_mlflow(store, port=port))  # ... and comes back, same port and store, after step 4

    caplog.set_level(logging.WARNING, logger="pluto.tracking")
    cfg = _config(tmp_path / "run", crc_patches, steps=steps, ckpt_every=steps, tracking_uri=url, experiment="faults")
    try:
        res = train(cfg, on_step=outage)
    finally:
        servers[-1].stop()
    assert res.step == steps and not res.preempted
    assert "unreachable" in caplog.text and "reachable again" in caplog.text  # the outage was seen, not dodged

    servers.append(start_mlflow(store, port=port))
    try:
        client = MlflowClient(url)
        run_id = (tmp_path / "run" / "mlflow_run_id").read_text()
        for key in ("loss", "dino", "ibot", "kde", "lr", "grad_norm", "images_per_s", "data_wait_frac"):
            history = client.get_metric_history(run_id, key)
            assert sorted(m.step for m in history) == list(range(1, steps + 1)), key  # every step once, no gaps
        want = {h["step"]: h["loss"] for h in res.history}
        assert {m.step: m.value for m in client.get_metric_history(run_id, "loss")} == pytest.approx(want)
        assert client.get_run(run_id).info.status == "FINISHED"
    finally:
        servers[-1].stop()


@pytest.mark.slow  # two torchrun launches of 2 ranks
def test_whole_job_killed_then_relaunched_resumes_from_the_last_checkpoint(tmp_path, crc_patches):
    cfg = _config(tmp_path, crc_patches, steps=4, ckpt_every=2)
    launcher = LocalLauncher(nnodes=1, nproc_per_node=2)
    job = launcher.submit(cfg)
    deadline = time.monotonic() + 600
    while not list_checkpoints(tmp_path / "checkpoints"):
        assert time.monotonic() < deadline and launcher.status(job) == "running", "no checkpoint before the kill"
        time.sleep(0.5)
    ranks = launcher.rank_pids(job)
    for agent in json.loads(open(job).read())["agents"]:
        os.killpg(agent["pid"], signal.SIGKILL)  # the agent, torchrun and every rank: no SIGTERM checkpoint
    deadline = time.monotonic() + 60
    while any(pid_alive(p) for p in ranks) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(pid_alive(p) for p in ranks) and launcher.status(job) == "failed"
    killed_at, _, last_good = load_latest(tmp_path / "checkpoints")
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))

    again = launcher.submit(cfg)
    assert launcher.wait(again, timeout_s=600, poll_s=1) == "succeeded"
    logs = "".join(p.read_text() for p in (tmp_path / "launch").glob("*.log"))
    assert f"resumed from {last_good}: step {killed_at.step}" in logs
    meta, _, _ = load_latest(tmp_path / "checkpoints")
    assert (meta.step, meta.global_sample_index) == (4, 16)
    assert set(_steps_logged(tmp_path)) == {1, 2, 3, 4}


def test_disk_full_while_checkpointing_keeps_the_last_good_one_and_resume_continues(tmp_path, crc_patches):
    run = tmp_path / "run"
    first = train(_config(run, crc_patches, steps=2, ckpt_every=2))
    (good,) = list_checkpoints(run / "checkpoints")
    good_bytes = good.read_bytes()

    cfg = _config(run, crc_patches, steps=4, ckpt_every=2)
    limit = len(good_bytes) // 2  # every file this process writes must stay under it: the next checkpoint cannot

    def full_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "pluto.train", str(write_run_config(cfg))], preexec_fn=full_disk,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "ckpt-000000004.pt: write failed" in proc.stderr and "previous checkpoints kept" in proc.stderr
    assert [p.name for p in (run / "checkpoints").iterdir()] == [good.name]  # no partial file, no tmp left
    assert good.read_bytes() == good_bytes
    assert _steps_logged(run) == [1, 2, 3, 4]  # the steps ran; only their checkpoint was lost

    res = train(cfg)  # limit lifted: resume from the last good checkpoint
    assert [h["step"] for h in res.history] == [3, 4] and res.global_sample_index == 16
    assert first.history[-1]["step"] == 2 and load_latest(run / "checkpoints")[0].step == 4
