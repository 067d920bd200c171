"""Cluster files rendered from the train settings (structure and values), and the launchers' decisions
(re-attach, submit, state) on replayed squeue/sacct/sbatch/kubectl outputs."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from pluto.errors import ConfigError
from pluto.train.config import ClusterSpec
from pluto.train.recipes import recipe_config
from pluto.train.launch import KubeflowLauncher, SlurmLauncher, launch, render_pytorchjob, render_sbatch

G = recipe_config("pluto_4g", activation_checkpointing=True, run_dir="/shared/runs/g1",
                cluster=ClusterSpec(job_name="pluto-4g-run1", s3_secret="pluto-s3"))


def test_pytorchjob_is_4_nodes_x_8_gpus_with_nccl_rdma_and_shared_storage():
    doc = yaml.safe_load(render_pytorchjob(G, "/shared/runs/g1/train_config.json"))
    assert (doc["apiVersion"], doc["kind"], doc["metadata"]["name"]) == ("kubeflow.org/v1", "PyTorchJob", "pluto-4g-run1")
    specs = doc["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] + specs["Worker"]["replicas"] == 4
    for role in ("Master", "Worker"):
        pod = specs[role]["template"]["spec"]
        (c,) = pod["containers"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 8
        assert c["resources"]["limits"]["rdma/rdma_shared_device_a"] == 1
        assert "IPC_LOCK" in c["securityContext"]["capabilities"]["add"]
        env = {e["name"]: e["value"] for e in c["env"]}
        assert env["NCCL_IB_DISABLE"] == "0" and env["NCCL_NET_GDR_LEVEL"] == "PHB"
        assert c["envFrom"] == [{"secretRef": {"name": "pluto-s3"}}]
        cmd = c["command"]
        assert cmd[0] == "torchrun" and cmd[-3:] == ["-m", "pluto.train", "/shared/runs/g1/train_config.json"]
        assert {"--nnodes=4", "--nproc-per-node=8", "--rdzv-backend=c10d", "--max-restarts=3",
                "--rdzv-endpoint=$(MASTER_ADDR):29500"} <= set(cmd)
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert mounts == {"shared": "/shared", "dshm": "/dev/shm"}
        vols = {v["name"]: v for v in pod["volumes"]}
        assert vols["shared"]["persistentVolumeClaim"]["claimName"] == "pluto-shared"
        assert vols["dshm"]["emptyDir"]["medium"] == "Memory"


def test_sbatch_runs_one_torchrun_agent_per_node_with_c10d(tmp_path):
    text = render_sbatch(G, "/shared/runs/g1/train_config.json")
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", text, flags=re.MULTILINE))
    assert directives["nodes"] == "4" and directives["gpus-per-node"] == "8" and directives["ntasks-per-node"] == "1"
    assert directives["cpus-per-task"] == "96" and directives["job-name"] == "pluto-4g-run1"
    assert directives["signal"] == "TERM@120" and "requeue" in directives
    assert directives["output"] == "/shared/runs/g1/slurm-%j.out"
    assert (directives["partition"], directives["time"]) == (G.cluster.partition, G.cluster.time_limit) == ("gpu", "72:00:00")
    lines = text.splitlines()
    first_command = next(i for i, ln in enumerate(lines[1:], 1) if ln.strip() and not ln.startswith("#"))
    assert max(i for i, ln in enumerate(lines) if ln.startswith("#SBATCH")) < first_command  # sbatch stops reading there
    assert 'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in text
    assert '--rdzv-endpoint="${head_node}:29500"' in text and "--max-restarts=3" in text
    assert "srun --kill-on-bad-exit=1 torchrun" in text and text.rstrip().endswith("-m pluto.train /shared/runs/g1/train_config.json")
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0  # valid shell syntax


def test_cluster_launch_runs_the_preflight_before_submitting(tmp_path):
    no_ckpt = replace(G, activation_checkpointing=False, run_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="enable activation_checkpointing"):
        launch(no_ckpt, "slurm", wait=False)
    assert not (tmp_path / "pretrain.sbatch").exists()


CLI_DATA = Path(__file__).parent / "data" / "cluster_cli"


@pytest.fixture
def cluster_cli(tmp_path, monkeypatch):
    """Stand-in squeue/sacct/sbatch/kubectl on PATH that print the replayed outputs in data/cluster_cli
    (see its README) and log their argv; `set(name, text)` chooses what a command prints."""
    bin_dir, out_dir = tmp_path / "bin", tmp_path / "cli-out"
    bin_dir.mkdir()
    out_dir.mkdir()
    log = tmp_path / "cli.log"
    for tool in ("squeue", "sacct", "sbatch"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\ncat {out_dir}/{tool}\n')
    (bin_dir / "kubectl").write_text(
        f'#!/bin/sh\necho "kubectl $*" >> {log}\ncase "$*" in\n'
        f'  *"-o name"*) cat {out_dir}/kubectl-name ;;\n  *"-o json"*) cat {out_dir}/kubectl-json ;;\nesac\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    for name in ("squeue", "sacct", "sbatch", "kubectl-name", "kubectl-json"):
        (out_dir / name).write_text("")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    class CLI:
        def set(self, name: str, text: str) -> None:
            (out_dir / name).write_text(text)

        def calls(self) -> list[str]:
            return log.read_text().splitlines() if log.exists() else []

    return CLI()


def test_slurm_launch_reattaches_to_our_running_job_instead_of_submitting(cluster_cli, tmp_path):
    cluster_cli.set("squeue", (CLI_DATA / "squeue_running.txt").read_text())
    cluster_cli.set("sacct", "RUNNING\n")
    assert launch(replace(G, run_dir=str(tmp_path)), "slurm", wait=False) == ("4242", "running")
    calls = cluster_cli.calls()
    assert calls[0] == "squeue --me --name pluto-4g-run1 --noheader --format %i"
    assert not any(c.startswith("sbatch") for c in calls) and not (tmp_path / "pretrain.sbatch").exists()


def test_slurm_launch_submits_when_no_job_of_that_name_is_queued(cluster_cli, tmp_path):
    cluster_cli.set("sbatch", (CLI_DATA / "sbatch_parsable.txt").read_text())
    cluster_cli.set("sacct", "PENDING\n")
    assert launch(replace(G, run_dir=str(tmp_path)), "slurm", wait=False) == ("4343", "pending")
    assert f"sbatch --parsable {tmp_path / 'pretrain.sbatch'}" in cluster_cli.calls()
    assert "#SBATCH --job-name=pluto-4g-run1" in (tmp_path / "pretrain.sbatch").read_text()


@pytest.mark.parametrize("sacct, state", [("COMPLETED", "succeeded"), ("CANCELLED by 1000", "failed"), ("BOOT_FAIL", "failed"),
                                          ("DEADLINE", "failed"), ("REQUEUED", "pending"), ("", "unknown")])
def test_slurm_status_reads_sacct_states(cluster_cli, sacct, state):
    cluster_cli.set("sacct", sacct + "\n")
    assert SlurmLauncher().status("4242") == state


def test_kubeflow_launch_reattaches_to_a_running_pytorchjob(cluster_cli, tmp_path):
    cluster_cli.set("kubectl-name", "pytorchjob.kubeflow.org/pluto-4g-run1\n")
    cluster_cli.set("kubectl-json", (CLI_DATA / "pytorchjob_running.json").read_text())
    assert launch(replace(G, run_dir=str(tmp_path)), "kubeflow", wait=False) == ("pluto-4g-run1", "running")
    assert not any(" create " in c or " delete " in c for c in cluster_cli.calls())


def test_kubeflow_launch_replaces_a_failed_pytorchjob_of_the_same_name(cluster_cli, tmp_path):
    cluster_cli.set("kubectl-name", "pytorchjob.kubeflow.org/pluto-4g-run1\n")
    cluster_cli.set("kubectl-json", (CLI_DATA / "pytorchjob_failed.json").read_text())
    assert KubeflowLauncher().status("pluto-4g-run1") == "failed"
    job_id, _ = launch(replace(G, run_dir=str(tmp_path)), "kubeflow", wait=False)
    writes = [c for c in cluster_cli.calls() if " get " not in c]
    assert job_id == "pluto-4g-run1" and writes == [
        "kubectl delete pytorchjob pluto-4g-run1 -n default --ignore-not-found --wait=true",
        f"kubectl create -n default -f {tmp_path / 'pytorchjob.yaml'}",
    ]
