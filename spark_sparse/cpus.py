"""The CPU this process runs on: which one it is (``cpu_model``, ``cpu_flags``) and the cores it was
given — its CPU affinity and its cgroup's CPU quota (e.g. a container's ``--cpus``), not the
machine's core count. Training sizes its threads and data workers by the cores, the benchmarks
record both, and measured routing keys its decisions on the model."""
from __future__ import annotations

import functools
import math
import os
import platform
from typing import Dict, FrozenSet, Optional

CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"  # cgroup v2: "<quota> <period>" or "max <period>"
CPUINFO = "/proc/cpuinfo"
# Vector instruction sets a CPU flag names, richest first: the first one present is shown beside the
# model's name (it does not tell a Zen 4 from a Zen 5, the family does).
VECTOR_ISAS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")


def cpuinfo_fields(path: str = CPUINFO) -> Dict[str, str]:
    """The first processor's fields of ``path`` ('model name', 'cpu family', 'model', 'flags', …);
    empty where the file cannot be read (not Linux)."""
    fields: Dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break  # the first processor's block ends
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_flags(path: str = CPUINFO, fields: Optional[Dict[str, str]] = None) -> FrozenSet[str]:
    """The first processor's flags (from ``fields`` when they were read already)."""
    return frozenset((cpuinfo_fields(path) if fields is None else fields).get("flags", "").split())


@functools.lru_cache(maxsize=None)
def cpu_model(path: str = CPUINFO) -> str:
    """The CPU by name, with its family, model and richest vector instruction set where ``path`` has
    them: a cloud machine may name every AMD EPYC generation just "AMD EPYC", yet a Zen 4 and a Zen 5
    (whose 512-bit FMA units run oneDNN's fp32 kernels faster than the BLAS) time the same layer
    differently, so measured routing must not share their decisions."""
    fields = cpuinfo_fields(path)
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown"
    details = []
    if "cpu family" in fields:
        details.append(f"family {fields['cpu family']} model {fields.get('model', '?')}")
    flags = cpu_flags(path, fields)
    details += [isa for isa in VECTOR_ISAS if isa in flags][:1]
    return f"{name} ({', '.join(details)})" if details else name


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
