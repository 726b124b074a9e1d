"""Peak memory of one call, as growth over what was live before it (weights, inputs, optimizer state).

CUDA: ``max_memory_allocated`` after ``reset_peak_memory_stats``, in the benchmark process.
CPU: peak resident-set growth of a child process that rebuilds the same case (same seed, same
weights and masks). In the child, glibc's mmap threshold is pinned (``MALLOC_MMAP_THRESHOLD_``),
so every tensor buffer is mapped and unmapped on its own and resident memory follows the live
tensors, and the kernel's peak RSS mark is reset before each measured call (Linux
``/proc/self/clear_refs``), so one child measures every contender of every case in turn.
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from typing import Dict, List, Optional

import torch

MMAP_THRESHOLD = 128 * 1024


def cuda_peak_growth(call, device: torch.device) -> int:
    """Bytes allocated at the peak of ``call`` above what was allocated before it."""
    call.reset()
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    call()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - base)


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # resets VmHWM to the current RSS


def rss_peak_growth(call) -> int:
    """Bytes of resident memory at the peak of ``call`` above the resident memory before it."""
    call.reset()
    gc.collect()
    reset_peak_rss()
    base = _status_kib("VmRSS")
    call()
    return (_status_kib("VmHWM") - base) * 1024


def cpu_peak_rss_supported() -> Optional[str]:
    """None when peak-RSS growth can be measured here, else why not."""
    try:
        reset_peak_rss()
        _status_kib("VmHWM")
    except OSError as e:
        return f"unavailable (needs Linux /proc/self/clear_refs: {e})"
    return None


def child_env() -> Dict[str, str]:
    """The memory child's environment: this spark_sparse first on the path, the parent's routing
    policy (measured routes come from the cache the parent wrote), glibc's mmap threshold pinned.

    Without the pin glibc raises its threshold as large blocks are freed and keeps later ones in
    its heaps: after one ResNet-18 forward+backward, a new 64 MiB tensor raised RSS by 9 MiB here.
    """
    import spark_sparse
    from spark_sparse.routing import get_routing
    root = os.path.dirname(os.path.dirname(os.path.abspath(spark_sparse.__file__)))
    return dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD), SPARK_SPARSE_ROUTING=get_routing(),
                PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))


def measure_cpu_in_child(specs: List[Dict[str, object]], timeout: float = 7200,
                         progress: bool = False) -> List[Dict[str, object]]:
    """Run ``memory_child`` in one fresh interpreter on every case spec; returns their measurements.

    The child's stderr is this process's: its progress lines (with ``progress``) and, should it fail,
    its error appear as they happen, not after a phase that can take many minutes."""
    command = [sys.executable, "-m", "spark_sparse.benchmarks.memory_child"] + (["--progress"] if progress else [])
    proc = subprocess.run(command, input=json.dumps(specs), stdout=subprocess.PIPE, text=True, env=child_env(),
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child process failed (exit status {proc.returncode}; its error is printed "
                           f"above)")
    return json.loads(proc.stdout.strip().splitlines()[-1])
