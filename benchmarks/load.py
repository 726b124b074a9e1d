"""Busy processes beside a measurement, so that contention is measured rather than guessed.

Every CPU training run has data-loading workers (or other jobs) competing with its compute threads;
``--background-load N`` starts N processes that spin on one core each for as long as a case is
measured, and stops them (by their own process ids) afterwards.
"""
from __future__ import annotations

import contextlib
import subprocess
import sys
from typing import Iterator, List

from spark_sparse.checks import at_least

SPIN = "while True: pass"
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: the kernel kills the spinner when the benchmark dies, even without cleanup (SIGKILL)."""
    try:
        import ctypes
        import signal
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def background_load(processes: int) -> Iterator[List[subprocess.Popen]]:
    """``processes`` busy-looping Python processes for the duration of the block (none for 0)."""
    at_least(processes, "background load", 0, "busy processes")
    started = [subprocess.Popen([sys.executable, "-c", SPIN], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent) for _ in range(processes)]
    try:
        yield started
    finally:
        for proc in started:
            proc.kill()
        for proc in started:
            proc.wait()
