"""The CPU cores this process was given: its CPU affinity and its cgroup's CPU quota (e.g. a
container's ``--cpus``), not the machine's core count. Training sizes its threads and data workers
by it, the benchmarks record it and bound their background load by it."""
from __future__ import annotations

import math
import os
from typing import Optional

CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"  # cgroup v2: "<quota> <period>" or "max <period>"


def cgroup_cpu_limit(path: str = CGROUP_CPU_MAX) -> Optional[float]:
    """CPUs allowed by the cgroup's quota (e.g. 1.5), or None without a quota."""
    try:
        with open(path, encoding="ascii") as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return int(quota) / int(period)


def affinity_cores() -> int:
    """Cores this process may be scheduled on (the machine's count where there is no affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cores_from(affinity: int, quota: Optional[float]) -> int:
    """Cores a process can keep busy: its affinity, capped by the cgroup quota (rounded down, at least 1)."""
    return affinity if quota is None else max(1, min(affinity, math.floor(quota)))


def usable_cores(cgroup_path: str = CGROUP_CPU_MAX) -> int:
    """:func:`cores_from` this process's affinity and cgroup quota."""
    return cores_from(affinity_cores(), cgroup_cpu_limit(cgroup_path))
