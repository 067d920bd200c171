"""Start pretraining locally (torchrun), on Slurm (sbatch) or on Kubernetes (Kubeflow PyTorchJob).

Every launcher runs the same entry point, `torchrun ... -m pluto.train <run_dir>/train_config.json`,
with c10d rendezvous and `--max-restarts` (elastic restarts resume from the last checkpoint). The
cluster files are rendered from `deploy/` templates and the same TrainConfig, and checked by the
preflight (memory per GPU at the cluster's GPU size) before anything is submitted. A launcher's
`submit` returns a job id; `status`/`wait` follow it; `find(cfg)` (by job name) lets a restarted flow
re-attach to a job that is still running instead of launching a second one (`launch` does this).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from string import Template

from pluto.atomic import write_bytes
from pluto.errors import ConfigError, PlutoError
from pluto.train.config import TrainConfig
from pluto.train.preflight import check_config

log = logging.getLogger(__name__)

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy"
LAUNCHERS = ("local", "slurm", "kubeflow")
FINISHED = ("succeeded", "failed")
# sacct states that end a job for good (anything else unlisted reads "unknown" and `wait` keeps polling)
SLURM_FAILED = ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE")
# states of a job that will run (again): queued, requeued or held
SLURM_WAITING = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "STOPPED")


def write_run_config(cfg: TrainConfig) -> Path:
    """Save the config every rank loads: `<run_dir>/train_config.json` (atomic)."""
    path = Path(cfg.run_dir) / "train_config.json"
    return write_bytes(path, cfg.to_json().encode())


def _values(cfg: TrainConfig, config_path: str) -> dict[str, object]:
    c = cfg.cluster
    # PyTorchJob pods take credentials from Kubernetes secrets by reference, never inline in the manifest
    env_from = "[" + ", ".join(f"{{secretRef: {{name: {name}}}}}" for name in (c.s3_secret, c.mlflow_secret) if name) + "]"
    cpus_per_node = c.cpus_per_gpu * c.gpus_per_node
    return {
        **c.to_dict(), "cpus_per_node": cpus_per_node, "cpus_per_task": c.cpus_per_task or cpus_per_node,
        "ranks_per_node": c.ranks_per_node, "workers": c.nodes - 1, "run_dir": cfg.run_dir, "config_path": config_path,
        "env_from": env_from,
    }


def render_sbatch(cfg: TrainConfig, config_path: str, template_dir: Path = DEPLOY_DIR) -> str:
    """The Slurm batch script: srun starts one torchrun agent per node (c10d on the first node).

    A CPU job (`gpus_per_node` 0) asks for no GPUs: its torchrun runs `cpu_ranks_per_node` gloo ranks.
    """
    text = Template((template_dir / "slurm" / "pretrain.sbatch.tmpl").read_text()).substitute(_values(cfg, config_path))
    if cfg.cluster.gpus_per_node:
        return text
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#SBATCH --gpus-per-node="))


def render_pytorchjob(cfg: TrainConfig, config_path: str, template_dir: Path = DEPLOY_DIR) -> str:
    """The Kubeflow PyTorchJob manifest: 1 Master + (nodes - 1) Worker pods, torchrun in each.

    A one-node job has no Worker entry at all: the operator's admission webhook rejects a Worker
    with 0 replicas (training-operator v1.9 pytorchjob_webhook.go).
    """
    text = Template((template_dir / "kubeflow" / "pytorchjob.yaml.tmpl").read_text()).substitute(_values(cfg, config_path))
    if cfg.cluster.nodes > 1:
        return text
    import yaml

    doc = yaml.safe_load(text)
    del doc["spec"]["pytorchReplicaSpecs"]["Worker"]
    return yaml.safe_dump(doc, sort_keys=False)


def _run(cmd: list[str], check: bool = True) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except FileNotFoundError as exc:
        raise PlutoError(f"{cmd[0]}: not found on PATH; is this a login node with the cluster tools?") from exc
    if out.returncode != 0:
        if not check:
            return ""
        raise PlutoError(f"{shlex.join(cmd)} failed ({out.returncode}): {out.stderr.strip()[:500]}")
    return out.stdout.strip()


class Launcher:
    """submit / status / wait / find. Status is one of pending, running, succeeded, failed, unknown."""

    def submit(self, cfg: TrainConfig) -> str:
        raise NotImplementedError

    def status(self, job_id: str) -> str:
        raise NotImplementedError

    def find(self, cfg: TrainConfig) -> str | None:
        """Id of a live job named `cfg.cluster.job_name`, if any."""
        raise NotImplementedError

    def wait(self, job_id: str, timeout_s: float = 86400.0, poll_s: float = 10.0) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.status(job_id)
            if state in FINISHED:
                return state
            if time.monotonic() > deadline:
                raise PlutoError(f"job {job_id}: still {state} after {timeout_s:.0f} s")
            time.sleep(poll_s)


@dataclass
class LocalLauncher(Launcher):
    """torchrun on this machine: `nnodes` agents here (several simulate nodes, c10d on 127.0.0.1).

    Job state lives in `<run_dir>/launch/<job_name>.json` (agent pids, rc files), so another
    process can find and follow the job.
    """

    nnodes: int = 1
    nproc_per_node: int = 1
    host: str = "127.0.0.1"

    def _state_path(self, run_dir: str | Path, job_name: str) -> Path:
        return Path(run_dir) / "launch" / f"{job_name}.json"

    def commands(self, cfg: TrainConfig, config_path: Path, port: int) -> list[list[str]]:
        """One torchrun command per simulated node."""
        base = [
            sys.executable, "-m", "torch.distributed.run", f"--nnodes={self.nnodes}", f"--nproc-per-node={self.nproc_per_node}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint={self.host}:{port}", f"--rdzv-id={cfg.cluster.job_name}",
            f"--max-restarts={cfg.cluster.max_restarts}", "--monitor-interval=1",
        ]
        return [base + [f"--local-addr={self.host}", "-m", "pluto.train", str(config_path)] for _ in range(self.nnodes)]

    def submit(self, cfg: TrainConfig) -> str:
        from pluto.services import free_port

        config_path = write_run_config(cfg)
        state_path = self._state_path(cfg.run_dir, cfg.cluster.job_name)
        state_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        agents = []
        for i, cmd in enumerate(self.commands(cfg, config_path, free_port(self.host))):
            rc_file = state_path.parent / f"{cfg.cluster.job_name}.node{i}.rc"
            rc_file.unlink(missing_ok=True)
            log_file = state_path.parent / f"{cfg.cluster.job_name}.node{i}.log"
            shell = f"{shlex.join(cmd)}; echo $? > {shlex.quote(str(rc_file))}"
            with open(log_file, "ab") as fh:
                proc = subprocess.Popen(["/bin/sh", "-c", shell], stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            agents.append({"pid": proc.pid, "rc_file": str(rc_file), "log": str(log_file)})
        state_path.write_text(json.dumps({"job_name": cfg.cluster.job_name, "agents": agents}))
        log.info("local job %s: %d torchrun agent(s) x %d process(es), logs in %s", cfg.cluster.job_name, self.nnodes,
                 self.nproc_per_node, state_path.parent)
        return str(state_path)

    def _agents(self, job_id: str) -> list[dict]:
        return json.loads(Path(job_id).read_text())["agents"]

    def status(self, job_id: str) -> str:
        if not Path(job_id).is_file():
            return "unknown"
        rcs = []
        for agent in self._agents(job_id):
            rc_file = Path(agent["rc_file"])
            if rc_file.is_file() and rc_file.read_text().strip():
                rcs.append(int(rc_file.read_text()))
            elif pid_alive(agent["pid"]):
                return "running"
            else:
                rcs.append(-1)
        return "succeeded" if all(rc == 0 for rc in rcs) else "failed"

    def find(self, cfg: TrainConfig) -> str | None:
        state_path = self._state_path(cfg.run_dir, cfg.cluster.job_name)
        if state_path.is_file() and self.status(str(state_path)) == "running":
            return str(state_path)
        return None

    def rank_pids(self, job_id: str) -> list[int]:
        """Pids of the training processes (children of the torchrun agents), for fault injection."""
        pids = []
        for agent in self._agents(job_id):
            out = subprocess.run(["pgrep", "-P", str(agent["pid"])], capture_output=True, text=True)
            for agent_pid in out.stdout.split():
                kids = subprocess.run(["pgrep", "-P", agent_pid], capture_output=True, text=True)
                pids += [int(p) for p in kids.stdout.split()]
        return pids

    def cancel(self, job_id: str) -> None:
        for agent in self._agents(job_id):
            if pid_alive(agent["pid"]):
                os.killpg(agent["pid"], signal.SIGTERM)


def pid_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (killed, not yet reaped by its parent) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"  # state follows the parenthesised name
    except OSError:  # no procfs (macOS) or gone meanwhile
        return True


def slurm_state(raw: str) -> str:
    """A squeue/sacct job state (`CANCELLED by 0` included) as a launcher state."""
    word = raw.split()[0] if raw.strip() else "UNKNOWN"
    if word in SLURM_FAILED:
        return "failed"
    return {"COMPLETED": "succeeded", "RUNNING": "running", "COMPLETING": "running", "SIGNALING": "running",
            "STAGE_OUT": "running", "CONFIGURING": "running", "RESIZING": "running"}.get(
        word, "pending" if word in SLURM_WAITING else "unknown")


class SlurmLauncher(Launcher):
    """sbatch the rendered script (saved as `<run_dir>/pretrain.sbatch`); squeue/sacct for state.

    The job gets the submitting environment (`--export=ALL`): that is how credentials such as
    MLFLOW_TRACKING_USERNAME/PASSWORD reach the ranks without being written into the script or the
    run directory. The state comes from squeue while slurmctld holds the job: a requeued job (node
    lost, preempted, stopped on a signal after a checkpoint) is pending there, whereas sacct's newest
    record can still be the attempt that just ended (NODE_FAIL). sacct answers after the job has left
    slurmctld's memory (MinJobAge). Each ended attempt is logged once, with its end state and node.
    """

    def __init__(self) -> None:
        self._reported: dict[str, int] = {}

    def submit(self, cfg: TrainConfig) -> str:
        config_path = write_run_config(cfg)
        script = Path(cfg.run_dir) / "pretrain.sbatch"
        script.write_text(render_sbatch(cfg, str(config_path)))
        return _run(["sbatch", "--parsable", "--export=ALL", str(script)]).split(";")[0]

    def status(self, job_id: str) -> str:
        self.report_attempts(job_id)
        cmd = ["squeue", "-j", job_id, "--noheader", "--format", "%T"]
        live = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if live.stdout.strip():
            return slurm_state(live.stdout.strip().splitlines()[0])
        if live.returncode != 0 and "Invalid job id" not in live.stderr:  # slurmctld busy or restarting: ask again later
            log.warning("%s failed (%d): %s", shlex.join(cmd), live.returncode, live.stderr.strip()[:300])
            return "unknown"
        state = _run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State"]).splitlines()
        return slurm_state(state[0] if state else "")

    def attempts(self, job_id: str) -> list[dict[str, str]]:
        """Every run of the job, oldest first (sacct --duplicates): state, node list, exit code, start, end."""
        fields = ("State", "NodeList", "ExitCode", "Start", "End")
        out = _run(["sacct", "-j", job_id, "-X", "-D", "-n", "-P", "-o", ",".join(fields)], check=False)
        return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]

    def report_attempts(self, job_id: str) -> list[dict[str, str]]:
        """Log each attempt that ended since the last call (why the job was requeued); returns them all."""
        runs = self.attempts(job_id)
        ended = runs[:-1]  # the newest record is the current attempt
        done = self._reported.get(job_id, 0)
        for i in range(done, len(ended)):
            run = ended[i]
            log.warning("slurm job %s: attempt %d ended %s on %s at %s (exit %s); requeued", job_id, i + 1, run["State"],
                        run["NodeList"], run["End"], run["ExitCode"])
        self._reported[job_id] = max(done, len(ended))
        return runs

    def find(self, cfg: TrainConfig) -> str | None:
        """Own pending/running job of that name (`--me`: another user's job of the same name is not ours)."""
        ids = _run(["squeue", "--me", "--name", cfg.cluster.job_name, "--noheader", "--format", "%i"]).split()
        return ids[0] if ids else None


@dataclass
class KubeflowLauncher(Launcher):
    """kubectl create the rendered PyTorchJob (saved as `<run_dir>/pytorchjob.yaml`); job id = its name.

    `launch` submits only when `find` saw no live job of that name, so one that exists has finished
    (a failed attempt of this run). It is deleted first: `apply` onto it would change nothing and
    report the old end state, so a retry would never train. Its checkpoints live in the run
    directory on shared storage, so the new job resumes from them.
    """

    namespace: str = "default"

    def submit(self, cfg: TrainConfig) -> str:
        config_path = write_run_config(cfg)
        manifest = Path(cfg.run_dir) / "pytorchjob.yaml"
        manifest.write_text(render_pytorchjob(cfg, str(config_path)))
        name = cfg.cluster.job_name
        _run(["kubectl", "delete", "pytorchjob", name, "-n", self.namespace, "--ignore-not-found", "--wait=true"])
        _run(["kubectl", "create", "-n", self.namespace, "-f", str(manifest)])
        return name

    def status(self, job_id: str) -> str:
        out = _run(["kubectl", "get", "pytorchjob", job_id, "-n", self.namespace, "-o", "json"])
        conditions = json.loads(out).get("status", {}).get("conditions", [])
        current = [c["type"] for c in conditions if c.get("status") == "True"]
        for kind, state in (("Succeeded", "succeeded"), ("Failed", "failed"), ("Running", "running"), ("Restarting", "running"),
                            ("Created", "pending")):
            if kind in current:
                return state
        return "unknown"

    def find(self, cfg: TrainConfig) -> str | None:
        name = cfg.cluster.job_name
        out = _run(["kubectl", "get", "pytorchjob", "-n", self.namespace, "-o", "name", "--field-selector", f"metadata.name={name}"])
        return name if out and self.status(name) not in FINISHED else None


def make_launcher(kind: str, cfg: TrainConfig, nproc_per_node: int | None = None) -> Launcher:
    if kind == "local":
        return LocalLauncher(nnodes=1, nproc_per_node=nproc_per_node or 1)
    if kind == "slurm":
        return SlurmLauncher()
    if kind == "kubeflow":
        return KubeflowLauncher(namespace=cfg.cluster.namespace)
    raise ConfigError(f"launcher {kind!r}: choose one of {LAUNCHERS}")


def launch(cfg: TrainConfig, kind: str = "local", *, nproc_per_node: int | None = None, wait: bool = True,
           timeout_s: float = 86400.0) -> tuple[str, str]:
    """Preflight, then submit (or re-attach to the running job of the same name); returns (job id, state).

    The preflight uses the cluster's world size and GPU memory for slurm/kubeflow (no memory check
    for a CPU job), the local process count (and no memory check on CPU) for local runs.
    """
    launcher = make_launcher(kind, cfg, nproc_per_node)
    if kind == "local":
        world, gpu_bytes = (nproc_per_node or 1), None
        cfg = replace(cfg, cluster=replace(cfg.cluster, nodes=1, gpus_per_node=world))
    else:
        world = cfg.cluster.world_size
        gpu_bytes = cfg.cluster.gpu_memory_gb * 1e9 if cfg.cluster.gpus_per_node else None
    check_config(cfg, world, gpu_bytes)
    existing = launcher.find(cfg)
    if existing:
        log.info("job %s already running as %s: re-attaching", cfg.cluster.job_name, existing)
        job_id = existing
    else:
        job_id = launcher.submit(cfg)
        log.info("submitted %s job %s", kind, job_id)
    state = launcher.wait(job_id, timeout_s=timeout_s, poll_s=2.0 if kind == "local" else cfg.cluster.poll_s) if wait else launcher.status(job_id)
    return job_id, state
