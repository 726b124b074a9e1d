"""Where a benchmark ran: versions, device, threads, numeric settings, machine load.

Every figure is meaningless without these, so they go into the JSON next to the figures.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from typing import Dict, Optional

import torch

from spark_sparse.cpus import cpu_model, usable_cores
from spark_sparse.openmp import wait_policy


def _version(module: str) -> Optional[str]:
    try:
        mod = __import__(module)
    except Exception:  # missing, or a build that cannot load here (e.g. a CUDA spconv on a CPU box)
        return None
    return str(getattr(mod, "__version__", "unknown"))


def load_average() -> Optional[list]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def memory_info() -> Optional[Dict[str, float]]:
    """The machine's memory at this moment, GiB (Linux): total, free and the page cache. A full page
    cache makes fresh allocations slower (the kernel reclaims cache pages to hand them out); SparK as
    published ran its step up to 24 % slower with it full on this project's CPU."""
    fields = {"MemTotal": "total_gib", "MemFree": "free_gib", "Cached": "page_cache_gib"}
    try:
        with open("/proc/meminfo") as f:
            values = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f if ":" in line)
                      if k in fields}
    except (OSError, ValueError):
        return None
    if set(values) != set(fields):
        return None
    return {fields[k]: round(v / 2 ** 20, 1) for k, v in values.items()}


def git_commit() -> Optional[str]:
    """The source tree's commit (with '-dirty' when it has uncommitted changes), if it is a checkout."""
    here = os.path.dirname(os.path.realpath(__file__))
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty else "")


def cuda_info() -> Optional[Dict[str, object]]:
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2 ** 30, 1), "count": torch.cuda.device_count(),
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32}


def environment() -> Dict[str, object]:
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in ("torch", "timm", "spconv", "numpy", "spark_sparse")},
        "git_commit": git_commit(),
        "cpu": {"model": cpu_model(), "logical_cores": os.cpu_count(), "usable_cores": usable_cores(),
                "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
                "mkldnn": torch.backends.mkldnn.is_available(), "openmp_wait": wait_policy()},
        "cuda": cuda_info(),
        "load_average_start": load_average(),
        "memory_start": memory_info(),
    }
