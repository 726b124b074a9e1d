"""Wall-clock timing done fairly: same process, interleaved round-robin, after warm-up, median.

Round-robin with a rotating start means slow drift of the machine (other jobs, clocks, heat)
hits every contender alike; the order rotates so no contender always runs right after another.
On CUDA the device is synchronized before starting and before stopping the clock. Python's
garbage collector is kept out of the timed region.
"""
from __future__ import annotations

import gc
import statistics
import sys
import time
from typing import Dict, List, Tuple

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def settle_gc() -> None:
    """Collect, then freeze what survives (imports, models) out of the collector's sight.

    A full collection walks every live Python object — about a second with torch and timm loaded
    on a slow machine — so it must never run inside or between timed calls.
    """
    gc.collect()
    gc.freeze()


def timed(call, device: torch.device, clock=time.perf_counter) -> float:
    """Seconds of one call (its untimed ``reset`` first) on ``clock`` (wall-clock by default;
    ``time.thread_time`` counts the calling thread's CPU time); the garbage collector is off meanwhile."""
    call.reset()
    synchronize(device)
    gc.disable()
    try:
        start = clock()
        call()
        synchronize(device)
        return clock() - start
    finally:
        gc.enable()


def time_interleaved(calls: Dict[str, object], *, warmup: int, repeats: int,
                     device: torch.device) -> Tuple[Dict[str, List[float]], Dict[str, str]]:
    """Seconds of every repeat of every call, and the error of any call that failed.

    A call that raises (e.g. out of memory at a large batch) is dropped from the rest of the run
    with its error recorded, so one failure does not lose the others' figures.
    """
    names = list(calls)
    times: Dict[str, List[float]] = {n: [] for n in names}
    errors: Dict[str, str] = {}
    for i in range(warmup + repeats):
        k = i % max(len(names), 1)
        for name in names[k:] + names[:k]:
            if name in errors:
                continue
            try:
                seconds = timed(calls[name], device)
            except Exception as e:  # recorded in the results and printed, never silently dropped
                errors[name] = f"{type(e).__name__}: {e}"
                print(f"warning: {name} failed: {errors[name]}", file=sys.stderr)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            if i >= warmup:
                times[name].append(seconds)
    return {n: t for n, t in times.items() if n not in errors}, errors


def median_ms(seconds: List[float]) -> float:
    return statistics.median(seconds) * 1e3


def paired_speedup(base: List[float], sparse: List[float]) -> float:
    """Median over repeats of base/sparse, pairing the repeats of one round (same machine state)."""
    n = min(len(base), len(sparse))
    if n == 0:
        raise ValueError("no repeats to compare")
    return statistics.median(b / s for b, s in zip(base[:n], sparse[:n]))
