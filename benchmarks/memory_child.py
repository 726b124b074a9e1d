"""The memory child process: rebuilds each case from its spec and measures every call's peak RSS growth.

Run as ``python -m spark_sparse.benchmarks.memory_child`` by :func:`.memory.measure_cpu_in_child`
(the environment it needs is set up there).
"""
from __future__ import annotations

import gc
import json
import sys
from typing import Dict

import torch

from .case import Case
from .memory import rss_peak_growth
from .timing import settle_gc


def measure_case(spec: Dict[str, object], progress: bool = False) -> Dict[str, Dict[str, Dict[str, object]]]:
    """{ratio: {mode: {contender: bytes | 'error: …' | reason}}} of one case, in this process; with
    ``progress``, a line on stderr before each measurement (the parent's terminal shows it)."""
    case = Case.from_spec(spec)
    settle_gc()
    result: Dict[str, Dict[str, Dict[str, object]]] = {}
    warmed = set()
    for ratio in spec["ratios"]:
        images, visible = case.inputs(ratio)
        per_mode = result.setdefault(str(ratio), {})
        for mode in spec["modes"]:
            calls, unavailable = case.calls(mode, images, visible, only=spec["measure"][str(ratio)][mode])
            out = per_mode.setdefault(mode, {})
            for name, call in calls.items():
                if progress:
                    print(f"  peak memory: {spec['model']} b{spec['batch']} mask ratio {ratio} {mode} {name}",
                          file=sys.stderr, flush=True)
                try:
                    if (mode, name) not in warmed:  # one-time allocations (thread pools, caches)
                        call.reset()
                        call()
                        warmed.add((mode, name))
                    out[name] = rss_peak_growth(call)
                except Exception as e:
                    out[name] = f"error: {type(e).__name__}: {e}"
            out.update(unavailable)
    return result


def child_main() -> None:
    """Read a JSON list of case specs on stdin; print the list of their measurements as JSON
    (``--progress``: and what is being measured, on stderr)."""
    progress = "--progress" in sys.argv[1:]
    specs = json.load(sys.stdin)
    if specs and specs[0].get("threads"):
        torch.set_num_threads(int(specs[0]["threads"]))
    results = []
    for spec in specs:
        results.append(measure_case(spec, progress))
        gc.collect()
    print(json.dumps(results))


if __name__ == "__main__":
    child_main()
