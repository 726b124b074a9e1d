"""How long torch's idle OpenMP threads spin before they sleep: a short spin on a CPU shared with
busy processes (``--shared-cpu``).

torch's CPU kernels (ATen, MKL, oneDNN) run their parallel regions on GNU OpenMP (libgomp). Between
two regions libgomp's idle threads spin 300 000 times (milliseconds) before they sleep, so on a CPU
of its own the next region starts at once. On a CPU that busy processes share (other jobs, data
workers decoding large images), a spinning thread holds a core the others need, and the compute
threads then wait for each other's timeslices at every region. Measured on this project's 2-core
CPU (``benchmarks/results/zen5/openmp-wait/``):
- with two busy processes beside it, resnet50's sparse encoder step ran 1.35× and the dense model
  1.6× as fast with a spin of 10 000 as with libgomp's default;
- on the quiet machine resnet50's step lost nothing, but the no-argument demo's short steps
  (ResNet-18 at 96 px) ran about 10 % slower: a region that finds its threads asleep waits for them
  to wake.
So the short spin is a choice, not the default.

libgomp reads its setting once, when torch is loaded, so the command line sets it before any
command loads torch. A program that imports torch itself sets ``GOMP_SPINCOUNT`` in its own
environment. A wait policy the user set (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``) is always kept.
Only GNU OpenMP reads ``GOMP_SPINCOUNT`` (torch's Linux wheels use it; builds on LLVM's or Intel's
OpenMP do not).
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import Mapping, MutableMapping, Optional

SPIN_VARIABLE = "GOMP_SPINCOUNT"
POLICY_VARIABLE = "OMP_WAIT_POLICY"
SHORT_SPIN = "10000"
DEFAULT_SPIN = "libgomp's default spin"

_decided: Optional[str] = None  # what choose_spin did in this process


def users_setting(environ: Mapping[str, str]) -> Optional[str]:
    """The wait policy set in ``environ`` (non-empty OMP_WAIT_POLICY / GOMP_SPINCOUNT), in words; None if none."""
    chosen = [f"{name}={environ[name]}" for name in (POLICY_VARIABLE, SPIN_VARIABLE) if environ.get(name)]
    return f"{', '.join(chosen)} (from the environment)" if chosen else None


def choose_spin(shared_cpu: bool, environ: Optional[MutableMapping[str, str]] = None,
                torch_loaded: Optional[bool] = None) -> str:
    """With ``shared_cpu``, set ``GOMP_SPINCOUNT`` to :data:`SHORT_SPIN` unless the user chose a wait
    policy or torch (and with it libgomp) is already loaded (then a warning says it cannot); returns
    the line the trainer and ``bench`` report. On the process's own environment it decides once: a
    second call (the trainer after the command line) returns the first decision."""
    global _decided
    own = environ is None
    if own and _decided is not None:
        return _decided
    environ = os.environ if own else environ
    loaded = "torch" in sys.modules if torch_loaded is None else torch_loaded
    decided = users_setting(environ)
    if decided is None and not shared_cpu:
        decided = DEFAULT_SPIN
    elif decided is None and loaded:
        decided = f"{DEFAULT_SPIN} (--shared-cpu came after torch was loaded: it cannot change it)"
        warnings.warn(f"--shared-cpu has no effect here: torch was loaded before it could set {SPIN_VARIABLE}; "
                      f"set {SPIN_VARIABLE}={SHORT_SPIN} in the environment before starting Python")
    elif decided is None:
        environ[SPIN_VARIABLE] = SHORT_SPIN
        decided = f"{SPIN_VARIABLE}={SHORT_SPIN} (--shared-cpu: a short spin)"
    if own:
        _decided = decided
    return decided


def wait_policy() -> str:
    """What torch's OpenMP threads do between parallel regions in this process, in words."""
    return _decided or users_setting(os.environ) or DEFAULT_SPIN
