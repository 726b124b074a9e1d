"""Timing candidate implementations of one layer, as cuDNN's benchmark mode does for its algorithms.

Cheap by design, as it runs inside a user's first training step:
- one untimed call of each candidate first. It builds the batch's index tables or tiles (later
  layers reuse them) and creates the library's kernels. On the CPU a forward is enough for that;
  on CUDA it is a forward + backward, so that cuDNN's algorithm search and Triton's compilation of
  the backward kernels stay out of the timing (both are cheap there next to the CPU's convs);
- one timed forward + backward of each; a second only for the candidates within ``CLOSE`` of the
  fastest, where noise could flip the choice. Each keeps its fastest time.
A candidate that fails (out of memory, a kernel that does not compile) drops out with its error
instead of failing the training step.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Tuple

import torch

REPEATS = 2
CLOSE = 1.25


def time_candidates(candidates: List[str], trial: Callable[[str, bool], None], device: torch.device,
                    repeats: int = REPEATS) -> Tuple[Dict[str, float], Dict[str, str]]:
    """(seconds of forward + backward per candidate, error per candidate that failed).

    ``trial(implementation, backward)`` runs the layer once, with or without its backward.
    """
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    errors: Dict[str, str] = {}
    alive = []
    for impl in candidates:
        try:
            trial(impl, device.type == "cuda")
            alive.append(impl)
        except Exception as e:  # noqa: BLE001 - any failure just removes the candidate
            errors[impl] = f"{type(e).__name__}: {e}"
    best: Dict[str, float] = {}
    for round_ in range(repeats):
        fastest = min(best.values(), default=0.0)
        for impl in alive:
            if round_ and best[impl] > CLOSE * fastest:
                continue  # clearly slower: another sample would not change the choice
            sync()
            start = time.perf_counter()
            trial(impl, True)
            sync()
            best[impl] = min(best.get(impl, float("inf")), time.perf_counter() - start)
    return best, errors
