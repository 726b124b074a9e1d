"""Timing candidate implementations of one layer in side trials, as cuDNN's benchmark mode does for
its algorithms: measured routing's way on CUDA (on the CPU the step's own calls are the samples,
sampling.py, which shares this module's sample counts).

Cheap by design, as it runs inside a user's first training step:
- one untimed call of each candidate first. It builds the batch's index tables or tiles (later
  layers reuse them) and creates the library's kernels. On the CPU a forward is enough for that;
  on CUDA it is a forward + backward, so that cuDNN's algorithm search and Triton's compilation of
  the backward kernels stay out of the timing (both are cheap there next to the CPU's convs);
- one timed forward + backward of each; a second only for the candidates within ``CLOSE`` of the
  fastest, where noise could flip the choice. Each keeps its fastest time. Layers whose fastest
  candidate takes under ``CHEAP_S`` get ``CHEAP_REPEATS`` samples of every candidate: there one
  preempted call on a busy machine would otherwise decide, and samples cost next to nothing.
A candidate that fails (out of memory, a kernel that does not compile) drops out with its error
instead of failing the training step.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Tuple

import torch

REPEATS = 2
CLOSE = 1.25
CHEAP_S = 0.02
CHEAP_REPEATS = 3


def decision_record(seconds: Dict[str, float], errors: Dict[str, str], among=None) -> dict:
    """A measured decision as the routing cache stores it: the fastest candidate (of ``among``; default:
    all), each candidate's forward + backward in ms, and why any failed. Trials and samples both
    write it."""
    pool = {impl: seconds[impl] for impl in (among if among is not None else seconds)}
    return {"implementation": min(pool, key=pool.get),
            "ms": {impl: round(s * 1e3, 3) for impl, s in seconds.items()}, "errors": dict(errors)}


def samples_wanted(best: Dict[str, float]) -> Dict[str, int]:
    """How many timed samples each candidate needs in all, given the fastest of each so far (every one
    sampled once): ``CHEAP_REPEATS`` of each where the fastest is under ``CHEAP_S``, else ``REPEATS``
    of those within ``CLOSE`` of the fastest and none more of the rest. Trials and samples both follow it."""
    fastest = min(best.values())
    if fastest < CHEAP_S:
        return dict.fromkeys(best, CHEAP_REPEATS)
    return {impl: REPEATS if t <= CLOSE * fastest else 1 for impl, t in best.items()}


def time_candidates(candidates: List[str], trial: Callable[[str, bool], None],
                    device: torch.device) -> Tuple[Dict[str, float], Dict[str, str]]:
    """(seconds of forward + backward per candidate, error per candidate that failed).

    ``trial(implementation, backward)`` runs the layer once, with or without its backward.
    """
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    errors: Dict[str, str] = {}

    def attempt(impl: str, backward: bool) -> float:
        """Seconds of one call, or inf after recording why it failed (any failure just drops it)."""
        try:
            sync()
            start = time.perf_counter()
            trial(impl, backward)
            sync()
            return time.perf_counter() - start
        except Exception as e:  # noqa: BLE001
            errors[impl] = f"{type(e).__name__}: {e}"
            return float("inf")

    alive = [impl for impl in candidates if attempt(impl, device.type == "cuda") < float("inf")]
    best: Dict[str, float] = {}
    taken = dict.fromkeys(alive, 0)
    while True:  # in rounds: each candidate still short of the samples it needs takes one more
        live = [impl for impl in alive if impl not in errors]
        if not live:
            break
        wanted = (samples_wanted({impl: best[impl] for impl in live}) if all(impl in best for impl in live)
                  else dict.fromkeys(live, 1))
        due = [impl for impl in live if taken[impl] < wanted[impl]]
        if not due:
            break
        for impl in due:
            taken[impl] += 1
            best[impl] = min(best.get(impl, float("inf")), attempt(impl, True))
    return {impl: t for impl, t in best.items() if impl not in errors}, errors
