"""What the machine gives this training process: usable cores, and whether the CPU computes bf16 natively.

The compute threads and the data-loading workers share the cores the process was given (its CPU
affinity and its cgroup's CPU quota, e.g. a container's ``--cpus``), not the machine's core count:
oversubscribed, every parallel region of the sparse encoder waits for a descheduled thread.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
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
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ThreadPlan:
    compute_threads: int
    workers: int
    cores: int
    why: str

    def describe(self) -> str:
        return (f"{self.compute_threads} compute thread(s), {self.workers} data worker(s) per process "
                f"({self.why})")


def plan_threads(device_type: str, local_world: int, workers: Optional[int] = None,
                 threads_env: Optional[str] = None, cgroup_path: str = CGROUP_CPU_MAX,
                 default_threads: Optional[int] = None) -> ThreadPlan:
    """Compute threads and data workers that together fit the cores this process was given.

    On the CPU the compute threads take every core of the process's share and one data worker
    prefetches (decoding a batch costs far less than a step, so one is enough and the busy time it
    takes is small); a GPU process keeps one core for itself and gives the rest to workers.
    ``workers`` (--workers) and OMP_NUM_THREADS (``threads_env``), when set, are respected;
    ``default_threads`` (torch's own choice: the physical cores) caps the compute threads, so
    hyper-threads are not added where torch would not use them.
    """
    affinity = affinity_cores()
    quota = cgroup_cpu_limit(cgroup_path)
    cores = affinity if quota is None else max(1, min(affinity, math.floor(quota)))
    share = max(1, cores // max(1, local_world))
    why = f"{cores} usable core(s): affinity {affinity}, cgroup quota {quota if quota is not None else 'none'}"
    if local_world > 1:
        why += f", {local_world} processes on this node"
    if device_type == "cuda":
        chosen_workers = min(8, max(0, share - 1)) if workers is None else workers
        compute = max(1, share - chosen_workers)
    else:
        chosen_workers = min(1, share) if workers is None else workers
        compute = share if default_threads is None else max(1, min(share, default_threads))
    if threads_env:
        compute = int(threads_env)
        why += ", OMP_NUM_THREADS set"
    return ThreadPlan(compute, chosen_workers, cores, why)


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU multiplies bf16 natively (AVX-512 BF16 or AMX), where bf16 autocast pays."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False
