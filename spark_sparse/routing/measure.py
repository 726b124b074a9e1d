"""Timing candidate implementations of one layer, as cuDNN's benchmark mode does for its algorithms.

Cheap by design: one untimed call of each candidate (it builds the batch's index tables and tiles,
and lets cuDNN / Triton pick or compile their kernels), then ``repeats`` interleaved timed calls,
keeping each candidate's fastest. A candidate that fails (out of memory, a kernel that does not
compile) drops out with its error instead of failing the training step.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Tuple

import torch

REPEATS = 2


def time_candidates(candidates: List[str], trial: Callable[[str], None], device: torch.device,
                    repeats: int = REPEATS) -> Tuple[Dict[str, float], Dict[str, str]]:
    """(seconds per candidate, error per candidate that failed)."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    errors: Dict[str, str] = {}
    alive = []
    for impl in candidates:
        try:
            trial(impl)
            alive.append(impl)
        except Exception as e:  # noqa: BLE001 - any failure just removes the candidate
            errors[impl] = f"{type(e).__name__}: {e}"
    best: Dict[str, float] = {}
    for _ in range(repeats):
        for impl in alive:
            sync()
            start = time.perf_counter()
            trial(impl)
            sync()
            best[impl] = min(best.get(impl, float("inf")), time.perf_counter() - start)
    return best, errors
