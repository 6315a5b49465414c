"""How many CPU workers a process gets: DataLoader workers and the image decode pass.

`runtime.num_workers = "auto"` (the default) sizes DataLoader workers to the machine: the
CPUs this process may use (its affinity mask, which taskset, Slurm and Kubernetes' static
CPU manager set, bounded by a cgroup v2 CPU quota when one is set), shared by the training
processes on this node (`LOCAL_WORLD_SIZE` under torchrun, else `runtime.processes`), one
of each share left to the training process itself, at most `MAX_AUTO_WORKERS`. A 2-core
machine gets 1 worker, a 16-core single-GPU machine 8, an 8-GPU node with 64 cores 7 per
GPU. An explicit int is used as given (0: load in the training process).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from slade_core.config import RuntimeConfig

MAX_AUTO_WORKERS = 8
_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cpus() -> int:
    """CPUs this process may run on: affinity mask, capped by a cgroup v2 quota if any."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API (macOS, Windows)
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cpus = min(cpus, quota)
    return max(1, cpus)


def _cgroup_quota() -> int | None:
    """ceil(quota / period) of /sys/fs/cgroup/cpu.max ("max 100000": no quota)."""
    try:
        quota, period = _CGROUP_CPU_MAX.read_text().split()[:2]
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):  # no cgroup v2 file, "max", or unparsable
        return None


def local_processes(runtime: RuntimeConfig) -> int:
    """Training processes sharing this machine (torchrun's LOCAL_WORLD_SIZE when set)."""
    value = os.environ.get("LOCAL_WORLD_SIZE", "")
    return max(1, int(value)) if value.isdigit() else runtime.processes


def loader_workers(runtime: RuntimeConfig) -> int:
    """DataLoader worker count for `runtime.num_workers` (see the module doc for "auto")."""
    if runtime.num_workers != "auto":
        return int(runtime.num_workers)
    share = usable_cpus() // local_processes(runtime)
    return max(0, min(MAX_AUTO_WORKERS, share - 1))
