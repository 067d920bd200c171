"""`pluto pretrain --launcher slurm` on a real Slurm cluster: the rendered sbatch (torchrun, gloo,
2 CPU ranks) on the tests' tiles, followed through squeue/sacct; the launcher killed and rerun; a
preemption signal; a lost node. Credentials for the password-protected MLflow reach the job only
through the submitting environment."""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
import urllib.error
import urllib.request

import pytest

from pluto.models import load_model
from tests.conftest import REPO
from tests.train.conftest import step_losses
from tests.slurm.conftest import (CKPT_EVERY, STEPS, job_ids, job_output, job_state, pretrain_cmd, run_pretrain, wait_for,
                                  write_settings)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _follow(settings, env) -> subprocess.Popen:
    return subprocess.Popen(pretrain_cmd(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def _finish(proc: subprocess.Popen, run_dir, timeout_s: float = 600) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=timeout_s)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-3000:] + err[-3000:] + job_output(run_dir)[-4000:]
    return out, err


def _texts_under(*roots) -> str:
    return "".join(p.read_text(errors="replace") for root in roots for p in root.rglob("*")
                   if p.is_file() and p.suffix not in (".pt", ".safetensors", ".db") and p.stat().st_size < 5_000_000)


@dataclass(frozen=True)
class FollowedRun:
    job: str
    run_dir: Path
    rerun: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def followed_run(slurm, tiles_manifest, auth_mlflow, tmp_path_factory) -> FollowedRun:
    """`pluto pretrain --launcher slurm` submits; killed while its job runs; run again, it follows that job
    to the end. The job itself is never disturbed, so its losses are also the uninterrupted reference."""
    root = tmp_path_factory.mktemp("slurm-cli")
    run_dir = root / "run"
    settings = write_settings(root / "s.yaml", run_dir, tiles_manifest, "pluto-cli", tracking_uri=auth_mlflow.url)
    # the login travels as the standard MLflow variables of the submitting environment, nowhere else
    env = {**slurm.env, "MLFLOW_TRACKING_USERNAME": auth_mlflow.username, "MLFLOW_TRACKING_PASSWORD": auth_mlflow.password}
    first = _follow(settings, env)
    try:
        (job,) = wait_for(lambda: job_ids(slurm, "pluto-cli"), 120, "the submitted job")
        wait_for(lambda: job_state(slurm, job) == "RUNNING", 120, f"job {job} to run", slurm.logs)
    finally:
        first.send_signal(signal.SIGKILL)  # the flow process dies mid-job
        first.communicate(timeout=30)
    assert job_state(slurm, job) == "RUNNING"
    rerun = run_pretrain(settings, env)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:] + job_output(run_dir)[-4000:]
    return FollowedRun(job, run_dir, rerun)


@pytest.fixture(scope="module")
def reference_losses(followed_run) -> dict[int, float]:
    got = step_losses(followed_run.run_dir)
    assert sorted(got) == list(range(1, STEPS + 1))
    return got


def test_pretrain_follows_the_job_to_its_end_and_a_rerun_reattaches_instead_of_submitting(slurm, followed_run, reference_losses):
    job, run_dir, rerun = followed_run.job, followed_run.run_dir, followed_run.rerun
    assert f"already running as {job}: re-attaching" in rerun.stderr
    assert f"slurm job {job}: succeeded" in rerun.stdout
    assert job_ids(slurm, "pluto-cli") == [job]  # one job ever submitted
    assert slurm.run("sacct", "-j", job, "-X", "-n", "-P", "-o", "State") == "COMPLETED"
    assert "backend gloo, rank 1 of 2" in job_output(run_dir)
    assert load_model(run_dir / "export").embed_dim > 0


def test_credentials_reach_the_job_from_the_environment_and_are_written_nowhere(slurm, followed_run, auth_mlflow):
    import mlflow

    with pytest.MonkeyPatch.context() as mp:  # the ranks logged to the password-protected server
        mp.setenv("MLFLOW_TRACKING_USERNAME", auth_mlflow.username)
        mp.setenv("MLFLOW_TRACKING_PASSWORD", auth_mlflow.password)
        client = mlflow.MlflowClient(auth_mlflow.url)
        (run,) = client.search_runs([client.get_experiment_by_name("pluto-pretrain").experiment_id])
        assert run.info.status == "FINISHED"
        assert len(client.get_metric_history(run.info.run_id, "loss")) == STEPS
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(f"{auth_mlflow.url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=pluto-pretrain")
    assert anonymous.value.code == 401
    # not in the rendered script, the run directory, the job's output or the daemons' logs
    assert auth_mlflow.password not in _texts_under(followed_run.run_dir, slurm.root / "log")


def test_preemption_signal_checkpoints_requeues_and_resumes_on_the_same_curve(slurm, tiles_manifest, reference_losses, tmp_path):
    run_dir = tmp_path / "run"
    proc = _follow(write_settings(tmp_path / "s.yaml", run_dir, tiles_manifest, "pluto-preempt"), slurm.env)
    first_ckpt = run_dir / "checkpoints" / f"ckpt-{CKPT_EVERY:09d}.pt"
    wait_for(first_ckpt.is_file, 300, "the first checkpoint", lambda: job_output(run_dir))
    (job,) = job_ids(slurm, "pluto-preempt")
    slurm.run("scancel", "--signal=TERM", job)  # what preemption (and the time-limit warning) sends

    out, err = _finish(proc, run_dir)
    text = job_output(run_dir)
    assert "SIGTERM received: checkpointing after this step" in text
    stopped_at = text.split("after saving ckpt-")[1][:9]
    assert CKPT_EVERY <= int(stopped_at) < STEPS  # a checkpoint of its own, when the signal came
    assert f"attempt 1 of job {job} on {slurm.node}, from checkpoint ckpt-{stopped_at}.pt" in text
    assert f"slurm job {job}: attempt 1 ended REQUEUED" in err and f"slurm job {job}: succeeded" in out
    assert job_ids(slurm, "pluto-preempt") == [job]  # requeued, not resubmitted
    got = step_losses(run_dir)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == pytest.approx(reference_losses, rel=1e-5, abs=1e-6)


def test_lost_node_requeues_the_job_which_resumes_from_its_last_checkpoint(slurm, tiles_manifest, reference_losses, tmp_path):
    run_dir = tmp_path / "run"
    proc = _follow(write_settings(tmp_path / "s.yaml", run_dir, tiles_manifest, "pluto-node"), slurm.env)
    wait_for((run_dir / "checkpoints" / f"ckpt-{CKPT_EVERY:09d}.pt").is_file, 300, "the first checkpoint", lambda: job_output(run_dir))
    (job,) = job_ids(slurm, "pluto-node")
    slurm.lose_node()
    try:
        slurm.wait_node(("down",), 120)  # SlurmdTimeout passes without an answer from the node
        assert job_state(slurm, job) == "PENDING"  # requeued, waiting for a node
    finally:
        slurm.start_slurmd()  # the node is back
    slurm.wait_node(("idle", "mixed", "allocated"), 60)

    out, err = _finish(proc, run_dir)
    assert f"slurm job {job}: attempt 1 ended NODE_FAIL on {slurm.node}" in err and f"slurm job {job}: succeeded" in out
    text = job_output(run_dir)
    resumed_from = text.split(f"attempt 1 of job {job} on {slurm.node}, from checkpoint ckpt-")[1][:9]
    assert int(resumed_from) >= CKPT_EVERY and int(resumed_from) % CKPT_EVERY == 0  # the last periodic one: no signal came
    assert job_ids(slurm, "pluto-node") == [job]
    got = step_losses(run_dir)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == pytest.approx(reference_losses, rel=1e-5, abs=1e-6)
