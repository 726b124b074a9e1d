"""``route``: the one function that decides how a sparse conv (or max-pool) layer runs.

Policies for ``requested='auto'``:
- ``measured`` (the default): calls with gradients of a layer time every candidate implementation
  on the layer's real input, forward + backward, keep the fastest, and store the decision in the
  routing cache (cache.py) under the layer's key — spec, input patch block r, compute dtype,
  batch-size bucket — and the environment's (device name, library versions). Later calls, and later
  processes, read it. On the CPU the samples are the training step's own calls, each run by one
  candidate in turn (sampling.py); on CUDA, where a candidate's activations would otherwise meet
  the step's memory peak, the first call times side trials of each (measure.py).
  Calls without gradients never tune: until a decision exists they follow the fixed rules.
- ``fixed``: the rule table (rules.py), for reproducible timing.
Choose with ``set_routing`` / ``SparseEncoder.set_routing`` / ``SPARK_SPARSE_ROUTING`` / ``--routing``.
An explicitly requested implementation runs where it can; where it cannot, the route falls back to
``auto`` and says why.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence

import torch

from ..choices import check_routing, routing_from_env
from ..kernels.max_pool import PoolSpec
from . import cache
from .environment import environment_key
from .implementations import (IMPLEMENTATIONS, KIND_IMPLEMENTATIONS, RUN, LayerSpec, candidates, label,
                              layer_kind, unsupported)
from .measure import decision_record, time_candidates
from .rules import RULES, Situation, describe, tall_rows
from .sampling import Probe, Sampler, execute

_mode: Optional[str] = None


def set_routing(mode: Optional[str]) -> None:
    """The process-wide policy of ``auto`` layers ('measured' or 'fixed'; None: back to the default,
    ``$SPARK_SPARSE_ROUTING`` or 'measured')."""
    global _mode
    _mode = None if mode is None else check_routing(mode)


@contextlib.contextmanager
def routing_mode(mode: Optional[str]):
    """``set_routing(mode)`` for a ``with`` block (None: leave the setting alone), then back."""
    global _mode
    kept = _mode
    if mode is not None:
        set_routing(mode)
    try:
        yield
    finally:
        _mode = kept


def get_routing() -> str:
    if _mode is not None:
        return _mode
    return routing_from_env()


@dataclass(frozen=True)
class Route:
    """How a layer runs (an implementation of routing.IMPLEMENTATIONS) and why, in words; ``probe``:
    this call is one of measured routing's samples (run it with :func:`run_route`)."""
    implementation: str
    reason: str
    probe: Optional[Probe] = field(default=None, compare=False, repr=False)
    measuring: bool = field(default=False, compare=False)  # settled later: not to be remembered

    @property
    def label(self) -> str:
        return label(self.implementation)


def run_route(route: Route, x, operands: Sequence) -> torch.Tensor:
    """The layer's output on ``x``: ``RUN[implementation](x, *operands)``, timed when the call is a sample."""
    if route.probe is None:
        return RUN[route.implementation](x, *operands)
    return execute(route.probe, RUN, x, operands)


@dataclass(frozen=True)
class Workload:
    """The layer's input besides its shape: the batch (what measured decisions are keyed on,
    bucketed to a power of two) and its active sites (what the fixed 1×1 rule reads; None: not known)."""
    batch: int
    sites: Optional[int] = None

    @property
    def bucket(self) -> int:
        return 1 << max(self.batch - 1, 0).bit_length()


def route(spec: LayerSpec, resolution: int, device, dtype: torch.dtype, requested: str = "auto", *,
          routing: Optional[str] = None, workload: Optional[Workload] = None,
          trial: Optional[Callable[[str, bool], None]] = None) -> Route:
    """How the conv (or max-pool) ``spec`` runs on input patch blocks of ``resolution``×``resolution`` sites.

    ``requested``: 'auto' or one implementation. ``routing``: the policy (None: :func:`get_routing`).
    Measured routing needs the ``workload`` to find a decision and ``trial(implementation, backward)``
    (one forward, with or without its backward, of the layer on its real input) to make one: on CUDA
    it runs the side trials; on the CPU its presence only says this call may be sampled (the Route
    then carries the probe that times it, see :func:`run_route`).
    """
    device = torch.device(device)
    mode = check_routing(routing or get_routing())
    memo_key = (spec, resolution, device, dtype, requested, mode,
                workload and (workload.bucket, tall_rows(spec, workload.sites)),
                cache.cache_path() if mode == "measured" else None, torch.get_num_threads())
    found = _MEMO.get(memo_key)
    if found is None:
        found, final = _route(spec, resolution, device, dtype, requested, mode, workload, trial)
        if final:  # the layer's forward asks on every call: a settled answer is looked up, not rebuilt
            _MEMO[memo_key] = found
    return found


def _route(spec, resolution, device, dtype, requested, mode, workload, trial):
    """(Route, whether it is final: not waiting for a measurement)."""
    kind = layer_kind(spec, resolution)
    own = KIND_IMPLEMENTATIONS[kind]
    note = ""
    if requested != "auto":
        if requested not in IMPLEMENTATIONS:
            raise ValueError(f"unknown implementation {requested!r}; choose 'auto' or one of "
                             f"{', '.join(IMPLEMENTATIONS)}")
        why = unsupported(requested, spec, resolution, device, dtype)
        if why is None:
            return Route(requested, "requested"), True
        if requested in own:
            note = f"requested '{requested}' cannot run this layer ({why}); auto: "
        elif len(own) > 1:
            note = f"{why}; auto: "
    final = True
    if mode == "measured" and workload is not None:
        measured = _TUNER.decide(spec, resolution, device, dtype, workload, trial)
        if isinstance(measured, Route):
            return (Route(measured.implementation, note + measured.reason, measured.probe, measured.measuring),
                    not measured.measuring)
        note += measured
        final = not measured  # an empty note: nothing to choose between
    sites = workload.sites if workload is not None else None
    return Route(*_fixed(Situation(spec, resolution, device, dtype, sites), note)), final


def _fixed(situation: Situation, note: str):
    kind = layer_kind(situation.spec, situation.r)
    for rule in RULES:
        if rule.kind == kind and rule.when(situation) and unsupported(
                rule.implementation, situation.spec, situation.r, situation.device, situation.dtype) is None:
            return rule.implementation, note + describe(rule, situation)
    raise AssertionError(f"no rule routes a {kind} conv")  # the table ends with a rule that always runs


# ---- measured routing -------------------------------------------------------------------------------

def layer_key(spec: LayerSpec, r: int, dtype: torch.dtype, workload: Workload) -> str:
    s = spec
    what = (f"maxpool c{s.channels}" if isinstance(s, PoolSpec) else
            f"g{s.groups} c{s.in_channels}-{s.out_channels}")
    return (f"k{s.kernel[0]}x{s.kernel[1]} s{s.stride[0]}x{s.stride[1]} p{s.padding[0]}x{s.padding[1]} "
            f"d{s.dilation[0]}x{s.dilation[1]} {what} r{r} {str(dtype).replace('torch.', '')} "
            f"batch<={workload.bucket}")


def _reason(decision: dict, source: str) -> str:
    times = ", ".join(f"{impl} {ms:.2f} ms" for impl, ms in sorted(decision["ms"].items(), key=lambda kv: kv[1]))
    failed = "".join(f"; {impl} failed" for impl in decision.get("errors", {}))
    return f"measured ({source}), forward+backward: {times}{failed}"


class Tuner:
    """Measured decisions: in memory, backed by the routing cache; counts what it tuned."""

    def __init__(self):
        self.decisions: Dict[str, Dict[str, Dict[str, dict]]] = {}  # cache path → environment → key → decision
        self.loaded = set()
        self.tuned_here = set()   # (path, env, key) measured by this process
        self.read = set()         # (path, env, key) taken from the file
        self.samplers: Dict[tuple, Sampler] = {}  # (path, env, key) → samples of a shape being measured
        self.stats = {"tuned": 0, "cached": 0, "seconds": 0.0}

    def _known(self, path: str, env: str) -> Dict[str, dict]:
        return self.decisions.setdefault(path, {}).setdefault(env, {})

    def _load(self, path: str, env: str) -> None:
        self._known(path, env).update(cache.read(path).get(env, {}))
        self.loaded.add((path, env))

    def decide(self, spec, r, device, dtype, workload: Workload, trial):
        """A measured Route (carrying a probe while the layer's calls are samples), or a note saying
        why there is none (then the fixed rules decide)."""
        options = candidates(spec, r, device, dtype)
        if len(options) < 2:
            return ""  # nothing to choose between: the rules name the one implementation
        path, env, key = cache.cache_path(), environment_key(device), layer_key(spec, r, dtype, workload)
        where = (path, env, key)
        if (path, env) not in self.loaded:
            self._load(path, env)
        known = self._known(path, env)

        def usable():  # a decision naming an implementation that cannot run here any more is measured again
            decision = known.get(key)
            return decision if decision is not None and decision.get("implementation") in options else None

        decision = usable()
        if decision is None and trial is not None:
            if where not in self.samplers:
                self._load(path, env)  # another process may have measured it meanwhile
                decision = usable()
            if decision is None:
                decision = self._measure(where, options, trial, device,
                                         Situation(spec, r, device, dtype, workload.sites))
                if isinstance(decision, Route):
                    return decision
                if decision is not None:
                    self._keep(where, decision)
        if decision is not None:
            if where not in self.tuned_here and where not in self.read:
                self.read.add(where)
                self.stats["cached"] += 1
            source = "tuned in this process" if where in self.tuned_here else "read from the routing cache"
            return Route(decision["implementation"], _reason(decision, source))
        return "not measured yet (only calls with gradients tune); rule: "

    def _keep(self, where, decision: dict) -> None:
        path, env, key = where
        self._known(path, env)[key] = decision
        self.tuned_here.add(where)
        self.stats["tuned"] += 1
        try:
            cache.store(env, {key: decision}, path)
        except OSError as e:  # a read-only home, a full disk: training goes on regardless
            cache.warn_once(path, f"cannot write it: {e}; decisions are kept for this process only", "write")

    def _measure(self, where, options, trial, device, situation: Situation):
        """A decision, None (every candidate failed), or on the CPU while samples are still wanted a
        Route for this call: one candidate with its probe. (Sampling times with the host's clock, so it
        needs a device that computes synchronously: other devices time side trials.)"""
        if device.type != "cpu":
            return self._tune(options, trial, device)
        sampler = self.samplers.get(where)
        if sampler is None:
            sampler = self.samplers[where] = Sampler(options, prior=_fixed(situation, "")[0])
        decision = sampler.decision()
        if decision is not None or not sampler.alive():
            del self.samplers[where]
            self.stats["seconds"] += sampler.overhead_s
            return decision
        probe = sampler.next_call()
        if probe is None:
            return Route(sampler.leading(), f"being measured: the samples of {', '.join(options)} wait for their "
                                            f"backward; the fastest so far runs this call", measuring=True)
        return Route(probe.implementation, f"being measured: this call is a {'warm-up' if probe.warm_up else 'sample'} "
                                           f"of {probe.implementation} (candidates {', '.join(options)})", probe,
                     measuring=True)

    def _tune(self, options, trial, device) -> Optional[dict]:
        start = time.perf_counter()
        seconds, errors = time_candidates(options, trial, device)
        self.stats["seconds"] += time.perf_counter() - start
        return decision_record(seconds, errors) if seconds else None


_TUNER = Tuner()
_MEMO: Dict[tuple, Route] = {}


def tuning_stats() -> dict:
    """This process's measured routing so far: layer shapes tuned, decisions read from the cache, the
    seconds tuning added (on the CPU: the sampled calls' time beyond the fastest candidate's), and
    ``pending``: layer shapes whose samples have not decided yet (their calls go on sampling)."""
    return dict(_TUNER.stats, pending=len(_TUNER.samplers))


def forget_measurements() -> None:
    """Drop this process's in-memory decisions and counters (the cache file stays): the next call
    reads the file again, as a new process would."""
    global _TUNER
    _TUNER = Tuner()
    _MEMO.clear()
