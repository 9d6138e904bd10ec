"""A real one-node Slurm cluster for the tests: munged, slurmctld and slurmd on this machine.

Everything lives in a temporary folder (config, munge key and socket, state, spool, logs) and uses
free ports, so it neither needs nor touches a system Slurm. Every Slurm command must see the
config through SLURM_CONF: use `cluster.env` or `cluster.run(...)`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.required import unavailable
from tests.s3_server import free_port

PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel")
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
            "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


@dataclass
class SlurmCluster:
    root: Path
    env: dict[str, str]  # os.environ plus SLURM_CONF: pass it to every Slurm command

    def run(self, *args: str) -> str:
        done = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def sbatch(self, *args: str, env: dict[str, str] | None = None) -> str:
        """Submit; returns the job id. `env` adds variables the job's script reads."""
        cmd = ["sbatch", "--parsable", *args]
        done = subprocess.run(cmd, env=self.env | (env or {}), capture_output=True, text=True,
                              timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
        return done.stdout.strip().split(";")[0]

    def states(self, job_id: str) -> dict[str, str]:
        """State of each job (or array element, keyed `JOBID_TASK`) that `job_id` names."""
        states = {}
        for line in self.run("scontrol", "show", "job", "-o", job_id).splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            task = fields.get("ArrayTaskId")
            key = f"{fields['ArrayJobId']}_{task}" if task and task != "N/A" else fields["JobId"]
            states[key] = fields["JobState"]
        return states

    def wait(self, job_id: str, timeout: float = 300, until: set[str] = FINISHED) -> dict[str, str]:
        """Poll until every element of `job_id` is in a state of `until`; returns the states."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.states(job_id)
            # A pending array is one record ("1_[0-3]") until its elements start.
            if states and all(s in until for s in states.values()):
                return states
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {states} after {timeout:.0f} s")
            time.sleep(0.5)

    def cancel_all(self) -> None:
        jobs = self.run("squeue", "-h", "-o", "%i").split()
        if jobs:
            self.run("scancel", *jobs)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in self.root.glob("*.log"))


def _node_line() -> str:
    """This machine as slurmd sees it (`NodeName=h CPUs=2 ... RealMemory=...`), at 127.0.0.1."""
    hardware = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True)
    line = hardware.stdout.splitlines()[0]
    return f"{line} NodeAddr=127.0.0.1 State=UNKNOWN"


def _config(root: Path, host: str, node: str) -> str:
    # No cgroups (containers rarely allow them) and no accounting database: linuxproc tracks a
    # job's processes, task/none binds nothing, cons_tres hands out CPUs.
    return f"""\
ClusterName=vmemtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SchedulerParameters=sched_interval=1
MinJobAge=3600
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
{node}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _start_munged(root: Path) -> subprocess.Popen:
    munge = root / "munge"
    munge.mkdir(mode=0o711)
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    return subprocess.Popen(
        ["munged", "--foreground", "--force", f"--socket={munge}/munge.socket",
         f"--key-file={key}", f"--pid-file={munge}/munged.pid", f"--log-file={root}/munged.log",
         f"--seed-file={munge}/munged.seed"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )


def _wait_for(check, what: str, cluster: SlurmCluster, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"test Slurm cluster: {what} not reached in {timeout} s\n"
                               + cluster.logs())
        time.sleep(0.3)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Iterator[SlurmCluster]:
    missing = [name for name in PROGRAMS if shutil.which(name) is None]
    if missing:
        reason = f"Slurm/munge not installed (missing {', '.join(missing)}; .ci/run installs them)"
        unavailable(reason)

    root = tmp_path_factory.mktemp("slurm")
    root.chmod(0o711)  # munged wants the socket's folders searchable by all, writable by none
    for name in ("state", "spool"):
        (root / name).mkdir()
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(_config(root, host, _node_line()))
    cluster = SlurmCluster(root, os.environ | {"SLURM_CONF": str(conf)})

    daemons = [_start_munged(root)]
    try:
        _wait_for(lambda: (root / "munge" / "munge.socket").exists(), "munged socket", cluster)
        for cmd in (["slurmctld", "-D", "-i"], ["slurmd", "-D"]):
            log = open(root / f"{cmd[0]}.out.log", "w")
            daemons.append(subprocess.Popen(cmd, env=cluster.env, stdout=log,
                                            stderr=subprocess.STDOUT))
            log.close()
        _wait_for(lambda: _node_state(cluster) == "idle", "node idle (sinfo)", cluster)
        yield cluster
    finally:
        try:
            cluster.cancel_all()
            _wait_for(lambda: not cluster.run("squeue", "-h").strip(), "no jobs left", cluster, 30)
        except (RuntimeError, subprocess.TimeoutExpired):
            pass  # the daemons may not have come up; stopping them below is what matters
        for process in reversed(daemons):
            _stop(process)


def _node_state(cluster: SlurmCluster) -> str:
    try:
        return cluster.run("sinfo", "-h", "-o", "%T").strip()
    except (RuntimeError, subprocess.TimeoutExpired):
        return ""
