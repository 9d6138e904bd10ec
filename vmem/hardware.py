"""What the machine can do: GPU or CPU, the CPU's bfloat16 support and cores, NUMA memory.

The defaults that follow the hardware (`--dtype auto`, `--engine auto`, vLLM's KV cache on CPU)
are decided from these facts, never from the machine a default happened to be tuned on.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

# CPU kinds that compute bfloat16 in hardware (AMX tiles; AVX512's bf16 dot product). On the
# others torch emulates it: 0.9 GFLOP/s against 132 in float32 on an AVX2 EPYC (~150x slower).
NATIVE_BF16 = ("AMX", "AVX512-BF16")


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@cache
def cpu_kind() -> str:
    """AMX, AVX512-BF16, AVX512 or AVX2 (or torch's name for another CPU): the vector
    instructions torch really uses. torch's dispatch honours ATEN_CPU_CAPABILITY and oneDNN's
    honours ONEDNN_MAX_CPU_ISA, so a capped AMX machine counts as the CPU it then acts as."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()  # "AVX512", "AVX2", "DEFAULT", ...
    if capability != "AVX512":
        return capability
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    uncapped = isa in ("ALL", "DEFAULT")
    flags = cpu_flags()
    if "amx_bf16" in flags and (uncapped or "AMX" in isa):
        return "AMX"
    if "avx512_bf16" in flags and (uncapped or any(k in isa for k in ("AMX", "BF16", "FP16"))):
        return "AVX512-BF16"
    if not uncapped and "AVX512" not in isa and "AVX10" not in isa:
        return "AVX2"
    return "AVX512"


def native_bf16() -> bool:
    return cpu_kind() in NATIVE_BF16


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity: a Slurm job's, taskset's), in order."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def cpu_cores() -> list[list[int]]:
    """The CPUs this process may run on, grouped by physical core (SMT siblings together)."""
    cores: dict[tuple[str, str], list[int]] = {}
    for cpu in allowed_cpus():
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            key = ((topology / "physical_package_id").read_text().strip(),
                   (topology / "core_id").read_text().strip())
        except OSError:  # no topology shown: each CPU is its own core
            key = ("cpu", str(cpu))
        cores.setdefault(key, []).append(cpu)
    return sorted(cores.values())


def rank_cpus(tp: int) -> list[list[int]]:
    """CPUs for each of `tp` tensor-parallel ranks: an equal share of this process's physical
    cores each (ranks meet at every all-reduce, so the slowest sets the pace), one logical CPU
    per core as vLLM's own x86 binding takes (SMT siblings share one core's vector units). The
    cores left over (fewer than tp) stay free for vLLM's scheduler process and vmem itself.
    Needs 1 <= tp <= len(cpu_cores())."""
    cores = cpu_cores()
    share = len(cores) // tp
    return [[core[0] for core in cores[rank * share:(rank + 1) * share]] for rank in range(tp)]


def parse_cpu_list(text: str) -> list[int]:
    """A CPU list as Linux and VLLM_CPU_OMP_THREADS_BIND write one, "0-3,8" -> [0, 1, 2, 3, 8]."""
    cpus = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        cpus += range(int(first), int(last or first) + 1)
    return cpus


def numa_node_of(cpu: int) -> int:
    nodes = sorted(Path(f"/sys/devices/system/cpu/cpu{cpu}").glob("node[0-9]*"))
    return int(nodes[0].name[4:]) if nodes else 0


def worker_numa_node() -> int:
    """The NUMA node of the first CPU this process may run on: where vLLM's CPU worker carves
    its KV cache from (a worker bound to other CPUs carves from theirs: `numa_node_of`)."""
    return numa_node_of(allowed_cpus()[0])


def numa_available_bytes(node: int) -> int:
    """Memory the node can hand out now, counted as vLLM's CPU worker counts it (free, page
    cache and reclaimable slabs), clamped by a cgroup limit; the whole machine's where the
    kernel shows no NUMA nodes."""
    path = Path(f"/sys/devices/system/node/node{node}/meminfo")
    if path.exists():
        info = {}
        for line in path.read_text().splitlines():
            parts = line.split()  # "Node 0 MemFree:  6900828 kB"
            info[parts[2].rstrip(":")] = int(parts[3]) * 1024
        available = (info["MemFree"] + info.get("Active(file)", 0)
                     + info.get("Inactive(file)", 0) + info.get("SReclaimable", 0))
    else:
        import psutil

        available = psutil.virtual_memory().available
    return min(available, cgroup_headroom())


def cgroup_headroom() -> int:
    """Bytes left under this process's own cgroup memory limit (a Slurm job's, say), cgroup v2
    or v1; unbounded without one."""
    unbounded = 1 << 62
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return unbounded
    for line in lines:
        _, controllers, group = line.split(":", 2)
        if controllers == "":  # v2
            folder, limit_file, used_file = "", "memory.max", "memory.current"
        elif "memory" in controllers.split(","):  # v1
            folder, limit_file, used_file = "memory", "memory.limit_in_bytes", \
                "memory.usage_in_bytes"
        else:
            continue
        base = Path("/sys/fs/cgroup", folder, group.lstrip("/"))
        try:
            limit = (base / limit_file).read_text().strip()
            used = int((base / used_file).read_text())
        except (OSError, ValueError):
            continue
        if limit != "max" and int(limit) < unbounded:
            return max(int(limit) - used, 0)
    return unbounded
