"""Multi-process CPU training under torchrun (gloo, 127.0.0.1): DDP, c10d across "nodes", faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from pluto.train.checkpoint import list_checkpoints, load_latest
from pluto.train.launch import LocalLauncher, write_run_config
from tests.train.conftest import step_losses


def _logs(run_dir) -> str:
    return "".join(p.read_text() for p in sorted((run_dir / "launch").glob("*.log")))[-4000:]


def _wait_for(pred, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


@pytest.mark.slow
def test_two_nodes_of_two_ranks_with_c10d_then_resume_on_one_rank(tmp_path, tiles_manifest, tiny_config):
    cfg = tiny_config(tmp_path, tiles_manifest, global_batch=8, steps=2, ckpt_every=2)
    cfg = replace(cfg, cluster=replace(cfg.cluster, max_restarts=2))  # spare restarts: slow gloo start-up under load
    launcher = LocalLauncher(nnodes=2, nproc_per_node=2)
    job = launcher.submit(cfg)
    assert launcher.wait(job, timeout_s=600, poll_s=1) == "succeeded", _logs(tmp_path)
    meta, _, _ = load_latest(tmp_path / "checkpoints")
    assert (meta.step, meta.world_size, meta.global_sample_index) == (2, 4, 16)
    # resume the same run on a different world size: the global sample sequence continues at 16
    from pluto.train.trainer import train

    res = train(replace(cfg, steps=3))
    assert res.step == 3 and res.global_sample_index == 24
    assert sorted(step_losses(tmp_path)) == [1, 2, 3]


@pytest.mark.slow
def test_kill_9_of_a_rank_restarts_and_resumes_on_the_uninterrupted_curve(tmp_path, tiles_manifest, tiny_config):
    steps = 5
    ref_cfg = tiny_config(tmp_path / "ref", tiles_manifest, steps=steps, ckpt_every=100)
    ref = LocalLauncher(nnodes=1, nproc_per_node=2)
    assert ref.wait(ref.submit(ref_cfg), timeout_s=600, poll_s=1) == "succeeded"

    cfg = tiny_config(tmp_path / "run", tiles_manifest, steps=steps, ckpt_every=2,
                      cluster=replace(ref_cfg.cluster, job_name="k", max_restarts=4))
    # restarts beyond the one the kill needs absorb gloo's occasional full-mesh connect failure when a
    # rank starts slowly on a loaded 2-core machine (the elastic restart resumes from the checkpoint)
    launcher = LocalLauncher(nnodes=1, nproc_per_node=2)
    job = launcher.submit(cfg)
    _wait_for(lambda: list_checkpoints(tmp_path / "run" / "checkpoints"), 600, "the step-2 checkpoint")
    victim = max(launcher.rank_pids(job))
    os.kill(victim, signal.SIGKILL)
    assert launcher.wait(job, timeout_s=600, poll_s=1) == "succeeded"
    assert "resumed from" in _logs(tmp_path / "run")  # the restarted attempt loaded the checkpoint
    got, want = step_losses(tmp_path / "run"), step_losses(tmp_path / "ref")
    assert sorted(got) == list(range(1, steps + 1))
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_sigterm_writes_a_checkpoint_and_exits_143(tmp_path, tiles_manifest, tiny_config):
    cfg = tiny_config(tmp_path, tiles_manifest, steps=1000, ckpt_every=1000)
    path = write_run_config(cfg)
    proc = subprocess.Popen([sys.executable, "-m", "pluto.train", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    metrics = tmp_path / "metrics.jsonl"
    try:
        _wait_for(lambda: metrics.is_file() and '"loss"' in metrics.read_text(), 300, "the first step")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 143, out.decode()[-2000:]
    meta, _, _ = load_latest(tmp_path / "checkpoints")
    assert meta.step >= 1 and meta.global_sample_index == meta.step * cfg.global_batch
    assert max(step_losses(tmp_path)) == meta.step


@pytest.mark.gpu
def test_one_gpu_nccl_smoke_run_of_the_same_entry_point(tmp_path, tiles_manifest, tiny_config):
    cfg = tiny_config(tmp_path, tiles_manifest, steps=2, precision="bf16", batch_per_gpu=4, global_batch=4)
    launcher = LocalLauncher(nnodes=1, nproc_per_node=1)
    assert launcher.wait(launcher.submit(cfg), timeout_s=600, poll_s=1) == "succeeded", _logs(tmp_path)
    assert "process group: backend nccl" in _logs(tmp_path)
    assert sorted(step_losses(tmp_path)) == [1, 2]
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert all(r["gpu_mem_gb"] > 0 and "mfu" in r for r in recs)
