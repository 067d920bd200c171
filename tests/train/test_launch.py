"""Cluster files rendered from the train settings (structure and values), and the Kubeflow launcher's
decisions (re-attach, replace) on replayed kubectl outputs. The Slurm launcher runs on a real Slurm
cluster in tests/slurm."""

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
from pluto.train.launch import KubeflowLauncher, launch, render_pytorchjob, render_sbatch, slurm_state

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
    assert "srun --kill-on-bad-exit=1 torchrun" in text and "--nproc-per-node=8" in text
    assert "-m pluto.train /shared/runs/g1/train_config.json || rc=$?" in text
    assert 'scontrol requeue "$SLURM_JOB_ID"' in text  # stopped on a signal after a new checkpoint: resume in a new attempt
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0  # valid shell syntax


def test_cpu_sbatch_asks_no_gpus_and_runs_the_configured_cpu_ranks():
    cpu = replace(G, cluster=ClusterSpec(job_name="cpu-run", nodes=1, gpus_per_node=0, cpu_ranks_per_node=2, cpus_per_task=2,
                                         partition="debug", rdzv_port=31234, time_limit="00:20:00"))
    text = render_sbatch(cpu, "/r/train_config.json")
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", text, flags=re.MULTILINE))
    assert not [d for d in directives if d.startswith("gpu")]
    assert (directives["cpus-per-task"], directives["partition"], directives["nodes"]) == ("2", "debug", "1")
    assert "--nproc-per-node=2" in text and '--rdzv-endpoint="${head_node}:31234"' in text
    assert cpu.cluster.world_size == 2


def test_cluster_launch_runs_the_preflight_before_submitting(tmp_path):
    no_ckpt = replace(G, activation_checkpointing=False, run_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="enable activation_checkpointing"):
        launch(no_ckpt, "slurm", wait=False)
    assert not (tmp_path / "pretrain.sbatch").exists()


CLI_DATA = Path(__file__).parent / "data" / "cluster_cli"


@pytest.fixture
def cluster_cli(tmp_path, monkeypatch):
    """A stand-in kubectl on PATH that prints the replayed outputs in data/cluster_cli (see its README)
    and logs its argv; `set(name, text)` chooses what a command prints."""
    bin_dir, out_dir = tmp_path / "bin", tmp_path / "cli-out"
    bin_dir.mkdir()
    out_dir.mkdir()
    log = tmp_path / "cli.log"
    (bin_dir / "kubectl").write_text(
        f'#!/bin/sh\necho "kubectl $*" >> {log}\ncase "$*" in\n'
        f'  *"-o name"*) cat {out_dir}/kubectl-name ;;\n  *"-o json"*) cat {out_dir}/kubectl-json ;;\nesac\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    for name in ("kubectl-name", "kubectl-json"):
        (out_dir / name).write_text("")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    class CLI:
        def set(self, name: str, text: str) -> None:
            (out_dir / name).write_text(text)

        def calls(self) -> list[str]:
            return log.read_text().splitlines() if log.exists() else []

    return CLI()


@pytest.mark.parametrize("raw, state", [("COMPLETED", "succeeded"), ("CANCELLED by 1000", "failed"), ("BOOT_FAIL", "failed"),
                                        ("DEADLINE", "failed"), ("NODE_FAIL", "failed"), ("REQUEUED", "pending"),
                                        ("REQUEUE_HOLD", "pending"), ("COMPLETING", "running"), ("", "unknown")])
def test_slurm_states_map_to_launcher_states(raw, state):
    """squeue/sacct state words; the real cluster's transitions are followed in tests/slurm."""
    assert slurm_state(raw) == state


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
