"""A real one-node Slurm cluster on 127.0.0.1, from Debian's packages (`make engines`).

munged, MariaDB, slurmdbd, slurmctld and slurmd run as root from a temp directory with their own
config, sockets, ports, state and logs, so nothing under /etc or /var is used or changed. Client
commands find the cluster through `SLURM_CONF` (set in `env`). No systemd and maybe no cgroups:
processes are tracked by parentage (proctrack/linuxproc), tasks are not confined (task/none).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from pluto.services import free_port, wait_for_port

COMMANDS = ("munged", "mariadb-install-db", "mariadbd", "mariadb", "slurmdbd", "slurmctld", "slurmd", "sacctmgr", "sbatch", "squeue",
            "sacct", "scontrol", "scancel", "sinfo")
SLURMD_TIMEOUT_S = 6  # short, so a lost node is noticed within seconds (slurmctld pings every timeout/3)


def missing_engines() -> list[str]:
    """The daemons and client commands the cluster needs that are not on PATH."""
    return [name for name in COMMANDS if shutil.which(name) is None]


@dataclass
class SlurmCluster:
    root: Path
    node: str
    cpus: int
    env: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def run(self, *cmd: str, check: bool = True, timeout_s: float = 60) -> str:
        out = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout_s)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()}\n{self.logs()}")
        return out.stdout.strip()

    def logs(self, tail_chars: int = 3000) -> str:
        parts = []
        for name in ("slurmctld", "slurmd", "slurmdbd"):
            path = self.root / "log" / f"{name}.log"
            if path.is_file():
                parts.append(f"--- {name}.log\n{path.read_text(errors='replace')[-tail_chars:]}")
        return "\n".join(parts)

    def start_slurmd(self) -> None:
        self._start("slurmd", ["slurmd", "-D", "-N", self.node, "-f", str(self.root / "slurm.conf")])

    def lose_node(self) -> list[int]:
        """What a node failure does to this node: slurmd, every slurmstepd and all their job processes
        die at once (SIGKILL, no checkpoint); returns the pids killed."""
        stepds = [p for p in self.job_processes() if p.name() == "slurmstepd"]
        victims = [psutil.Process(self.procs["slurmd"].pid), *stepds]
        for p in stepds:
            victims += p.children(recursive=True)
        for p in victims:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self.procs["slurmd"].wait(timeout=15)
        return [p.pid for p in victims]

    def job_processes(self) -> list[psutil.Process]:
        """slurmstepd and job processes of this cluster: those whose environment names its slurm.conf
        (slurmstepd inherits slurmd's, jobs the submitter's)."""
        mark = f"SLURM_CONF={self.env['SLURM_CONF']}".encode()
        daemons = {p.pid for p in self.procs.values()} | {os.getpid()}
        found = []
        for p in psutil.process_iter():
            try:  # read raw: slurmstepd retitles itself, leaving an environ block psutil parses as empty
                if p.pid not in daemons and mark in Path(f"/proc/{p.pid}/environ").read_bytes().split(b"\0"):
                    found.append(p)
            except OSError:  # gone meanwhile
                pass
        return found

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-n", self.node, "-o", "%T")

    def wait_node(self, states: tuple[str, ...], timeout_s: float = 60) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.node_state()
            if state.rstrip("*~#!%$@^-") in states:
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {self.node} still {state!r}, waited for {states}\n{self.logs()}")
            time.sleep(0.5)

    def _start(self, name: str, cmd: list[str]) -> None:
        with open(self.root / "log" / f"{name}.out", "ab") as log:
            self.procs[name] = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        """Cancel every job, then stop the daemons in reverse start order (SIGTERM, then SIGKILL)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--user=root", "--full", check=False)
            time.sleep(1)
        for name, proc in reversed(list(self.procs.items())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=15)
        for p in self.job_processes():  # slurmstepd and job processes that outlived their daemon
            try:
                p.kill()
            except psutil.NoSuchProcess:  # gone meanwhile
                pass


def _memory_mb() -> int:
    """Most of this machine's memory, so jobs that ask for memory (`--mem`, as dask-jobqueue's do) fit."""
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def start_cluster(root: Path, cpus: int | None = None) -> SlurmCluster:
    """Configure and start the whole cluster under `root`; registers cluster, account and root user."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # munged refuses a socket directory others can write
    for sub in ("log", "state", "spool", "mysql"):
        (root / sub).mkdir(exist_ok=True)
    node = socket.gethostname().split(".")[0]
    cpus = cpus or max(2, os.cpu_count() or 2)
    ports = {name: free_port() for name in ("mysql", "dbd", "ctld", "slurmd")}
    db_pass = secrets.token_hex(8)
    env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
    cluster = SlurmCluster(root, node, cpus, env, ports=ports)
    try:
        _bring_up(cluster, db_pass)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _bring_up(cluster: SlurmCluster, db_pass: str) -> None:
    root, node, ports, conf = cluster.root, cluster.node, cluster.ports, cluster.root / "slurm.conf"
    sock = root / "munge.socket"
    key = root / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    cluster._start("munged", ["munged", "-F", "-f", f"--socket={sock}", f"--key-file={key}", f"--pid-file={root}/munged.pid",
                              f"--log-file={root}/log/munged.log", f"--seed-file={root}/munged.seed"])

    my = ["--no-defaults", f"--datadir={root}/mysql", "--user=root"]
    subprocess.run(["mariadb-install-db", *my, "--auth-root-authentication-method=socket", "--skip-test-db"],
                   check=True, capture_output=True, timeout=120)
    cluster._start("mariadbd", ["mariadbd", *my, f"--socket={root}/mysql.sock", f"--port={ports['mysql']}", "--bind-address=127.0.0.1",
                                "--skip-name-resolve", f"--pid-file={root}/mysql.pid", f"--log-error={root}/log/mariadb.log",
                                "--innodb-buffer-pool-size=64M", "--innodb-log-file-size=16M"])
    wait_for_port("127.0.0.1", ports["mysql"], 60, cluster.procs["mariadbd"])
    sql = (f"CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{db_pass}'; "
           "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';")
    subprocess.run(["mariadb", "--no-defaults", f"--socket={root}/mysql.sock", "-u", "root", "-e", sql], check=True, timeout=60)

    auth = f"AuthType=auth/munge\nAuthInfo=socket={sock},cred_expire=10\n"
    _write(root / "slurmdbd.conf", f"""{auth}DbdHost={node}
DbdAddr=127.0.0.1
DbdPort={ports['dbd']}
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={ports['mysql']}
StorageUser=slurm
StoragePass={db_pass}
StorageLoc=slurm_acct_db
PidFile={root}/slurmdbd.pid
LogFile={root}/log/slurmdbd.log
DebugLevel=info
""")
    _write(conf, f"""ClusterName=pluto
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ports['ctld']}
SlurmdPort={ports['slurmd']}
SlurmUser=root
SlurmdUser=root
{auth}CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={ports['dbd']}
AccountingStoragePass={sock}
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SwitchType=switch/none
SlurmdTimeout={SLURMD_TIMEOUT_S}
ReturnToService=2
JobRequeue=1
KillWait=10
SchedulerParameters=sched_interval=2,bf_interval=2
MinJobAge=600
InactiveLimit=0
SlurmdParameters=config_overrides
NodeName={node} NodeAddr=127.0.0.1 CPUs={cluster.cpus} RealMemory={_memory_mb()} State=UNKNOWN
PartitionName=cpu Nodes={node} Default=YES MaxTime=INFINITE State=UP
""", 0o644)

    cluster._start("slurmdbd", ["slurmdbd", "-D"])
    wait_for_port("127.0.0.1", ports["dbd"], 60, cluster.procs["slurmdbd"])
    cluster.run("sacctmgr", "-i", "add", "cluster", "pluto")
    cluster.run("sacctmgr", "-i", "add", "account", "pluto", "Description=tests", "Organization=pluto")
    cluster.run("sacctmgr", "-i", "add", "user", "root", "Account=pluto", "DefaultAccount=pluto")
    cluster._start("slurmctld", ["slurmctld", "-D", "-i", "-f", str(conf)])
    wait_for_port("127.0.0.1", ports["ctld"], 60, cluster.procs["slurmctld"])
    cluster.start_slurmd()
    cluster.wait_node(("idle",), 60)


if __name__ == "__main__":  # bring a cluster up by hand: python tests/slurm/cluster.py DIR
    import sys

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    c = start_cluster(Path(sys.argv[1]))
    print(f"export SLURM_CONF={c.root / 'slurm.conf'}", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        c.stop()
