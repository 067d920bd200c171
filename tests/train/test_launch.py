"""Cluster files rendered from the train settings: parsed and checked for structure and values."""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace

import pytest
import yaml

from pluto.errors import ConfigError
from pluto.ssl.config import ssl_preset
from pluto.train.config import ClusterSpec, TrainConfig
from pluto.train.launch import launch, render_pytorchjob, render_sbatch

G = TrainConfig(arch="pluto_4g", ssl=ssl_preset("pluto_4g"), batch_per_gpu=32, global_batch=1024,
                activation_checkpointing=True, run_dir="/shared/runs/g1",
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
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", text, flags=re.M))
    assert directives["nodes"] == "4" and directives["gpus-per-node"] == "8" and directives["ntasks-per-node"] == "1"
    assert directives["cpus-per-task"] == "96" and directives["job-name"] == "pluto-4g-run1"
    assert directives["signal"] == "TERM@120" and "requeue" in directives
    assert directives["output"] == "/shared/runs/g1/slurm-%j.out"
    assert 'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in text
    assert '--rdzv-endpoint="${head_node}:29500"' in text and "--max-restarts=3" in text
    assert "srun --kill-on-bad-exit=1 torchrun" in text and text.rstrip().endswith("-m pluto.train /shared/runs/g1/train_config.json")
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0  # valid shell syntax


def test_cluster_launch_runs_the_preflight_before_submitting(tmp_path):
    no_ckpt = replace(G, activation_checkpointing=False, run_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="enable activation_checkpointing"):
        launch(no_ckpt, "slurm", wait=False)
    assert not (tmp_path / "pretrain.sbatch").exists()
