"""What the machine gives this training process: usable cores, and whether the CPU computes bf16 natively.

The compute threads and the data-loading workers share the cores the process was given (its CPU
affinity and its cgroup's CPU quota, e.g. a container's ``--cpus``), not the machine's core count:
oversubscribed, every parallel region of the sparse encoder waits for a descheduled thread.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..cpus import CGROUP_CPU_MAX, affinity_cores, cgroup_cpu_limit, cores_from


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
    affinity, quota = affinity_cores(), cgroup_cpu_limit(cgroup_path)
    cores = cores_from(affinity, quota)
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
