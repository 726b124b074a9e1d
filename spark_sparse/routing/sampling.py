"""Measured routing on the CPU: the training step's own calls are the samples.

Trials beside the step (measure.py) run every candidate's forward and one or two forward +
backward passes on top of the step: on a CPU encoder that is about three steps' worth of work,
once per machine. Here, while a layer shape is measured, each of its calls runs one candidate (in
turn) as the real computation and is timed, forward and backward. Every candidate computes the
same numbers, so the steps stay correct; tuning costs only the slower candidates' extra time on the
calls that ran them, and the decision lands a few calls later. A sampled call is one autograd node
(:class:`_Sampled`): its backward runs the candidate's own graph, timed alone.

The fixed rules' choice runs first. Each candidate's first completed call is a warm-up (the
library creates its kernels, the process first touches the memory), not a sample; one whose warm-up
took ``WARM_UP_DROP`` × the fastest warm-up is not sampled at all. After one sample of each, the
candidates slower than ``CLOSE`` × the fastest stop; the others get ``REPEATS`` samples (every
candidate ``CHEAP_REPEATS`` for layers under ``CHEAP_S``, where one preempted call on a busy machine
would otherwise decide), and the fastest sample decides. Calls that come while every wanted sample
waits for its backward run the fastest candidate so far, untimed. Samples are taken on whatever
call comes, so a sample may include building the batch's index tables for its candidate. A
candidate whose forward or backward fails drops out and another one computes the call (after a
failed backward, by recomputing its forward on the saved inputs), so the step goes on.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from ..features import SparseFeatures
from .measure import CHEAP_S, decision_record, samples_wanted

# a candidate whose warm-up took this many times the fastest warm-up is not sampled
WARM_UP_DROP = 2.0
# calls still waiting for their backward are kept up to this many (a model only ever called with
# gradients and no backward cannot hold records forever); a call whose backward never ran is also
# dropped as soon as a later call's backward has completed
MAX_PENDING = 16


class _Sampled(torch.autograd.Function):
    """A sampled call as one autograd node. Its forward builds the candidate's own graph on detached
    aliases of the inputs; its backward runs that graph alone, so both are timed exactly. The inputs
    are saved as any layer saves them (autograd refuses one modified in place since, and frees them
    after the backward). A candidate whose backward raises drops out like one whose forward raises:
    the call's gradients then come from another candidate, its forward recomputed on the saved inputs
    (the same numbers), and the step goes on. A backward that builds a graph (double backward)
    recomputes the call on the inputs themselves, so higher-order gradients reach them."""

    @staticmethod
    def forward(ctx, call, *tensors):
        ctx.call = call
        ctx.autocast = (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
        ctx.save_for_backward(*tensors)
        inputs = [t.detach().requires_grad_(t.requires_grad) for t in tensors]
        with torch.enable_grad():
            start = time.perf_counter()
            out = call.function(*call.arguments(inputs))
            call.probe.forward_s = time.perf_counter() - start
        ctx.graph = (inputs, out)
        return out.detach()

    @staticmethod
    def backward(ctx, grad):
        tensors = ctx.saved_tensors  # as they were, or autograd's own in-place error
        call, graph, ctx.graph = ctx.call, ctx.graph, None  # the candidate's graph is spent either way
        if torch.is_grad_enabled() or graph is None:  # double backward, or a second one through a retained graph
            return (None,) + call.gradients(tensors, grad, ctx.autocast, connect=torch.is_grad_enabled())
        inputs, out = graph
        try:
            start = time.perf_counter()
            found = _gradients(out, inputs, grad)
            call.probe.backward_s = time.perf_counter() - start
        except Exception as error:  # noqa: BLE001 - any failure of a candidate just drops it
            if torch.is_anomaly_enabled():
                raise  # anomaly mode's report (a NaN) is about the training, not the candidate
            return (None,) + call.fall_back(error, tensors, grad, ctx.autocast)
        return (None,) + found


def _gradients(out: torch.Tensor, inputs: Sequence[torch.Tensor], grad, create_graph: bool = False) -> tuple:
    """Each input's gradient through ``out`` (None for those that need none)."""
    found = iter(torch.autograd.grad(out, [t for t in inputs if t.requires_grad], grad, allow_unused=True,
                                     create_graph=create_graph))
    return tuple(next(found) if t.requires_grad else None for t in inputs)


class _Call:
    """What a sampled call runs: the candidate's function on ``x`` and ``operands``. Every tensor among
    them passes through the autograd node (saved there, and given its gradient); the call keeps only
    the rest (the geometry, non-tensor operands), so nothing outlives the backward but what autograd keeps."""

    def __init__(self, probe: "Probe", run: Dict[str, Callable[..., torch.Tensor]], x, operands: Sequence):
        self.probe, self.run = probe, run
        self.function = run[probe.implementation]
        self.geometry, self.stride = x.geometry, x.stride
        slots = [x.features] + list(operands)
        self.positions = [i for i, t in enumerate(slots) if isinstance(t, torch.Tensor)]
        self.rest = [None if i in self.positions else t for i, t in enumerate(slots)]

    def tensors(self, x, operands: Sequence) -> List[torch.Tensor]:
        """The call's tensors, in order (not kept here: the autograd node saves them)."""
        slots = [x.features] + list(operands)
        return [slots[i] for i in self.positions]

    def arguments(self, tensors: Sequence[torch.Tensor]) -> list:
        slots = list(self.rest)
        for i, t in zip(self.positions, tensors):
            slots[i] = t
        return [SparseFeatures(slots[0], self.geometry, self.stride)] + slots[1:]

    def gradients(self, tensors, grad, autocast, connect: bool = False) -> tuple:
        """The tensors' gradients by the call's function, its forward recomputed as the call's ran; with
        ``connect``, on the tensors themselves and keeping the graph (for a double backward)."""
        inputs = list(tensors) if connect else [t.detach().requires_grad_(t.requires_grad) for t in tensors]
        enabled, dtype = autocast
        with torch.enable_grad(), torch.autocast("cpu", dtype=dtype, enabled=enabled):
            out = self.function(*self.arguments(inputs))
        return _gradients(out, inputs, grad, create_graph=connect)

    def fall_back(self, error: BaseException, tensors, grad, autocast) -> tuple:
        """After the candidate's backward raised: drop it, and compute the gradients by the next live
        candidate (dropping any that raise too); the last error goes up when none is left."""
        implementation = self.probe.implementation
        while True:
            instead = self.probe.sampler.failed(implementation, error)
            if instead is None:
                raise error
            self.function, implementation = self.run[instead], instead
            try:
                return self.gradients(tensors, grad, autocast)
            except Exception as again:  # noqa: BLE001
                error = again


class Probe:
    """One timed call of one candidate: its forward's and its backward's seconds."""

    def __init__(self, implementation: str, warm_up: bool, sampler: "Sampler"):
        self.implementation = implementation
        self.warm_up = warm_up
        self.sampler = sampler
        self.forward_s: Optional[float] = None
        self.backward_s: Optional[float] = None
        self.needs_backward = False

    @property
    def done(self) -> bool:
        return self.forward_s is not None and (not self.needs_backward or self.backward_s is not None)

    @property
    def seconds(self) -> float:
        return self.forward_s + (self.backward_s or 0.0)

    def run(self, run: Dict[str, Callable[..., torch.Tensor]], x, operands: Sequence) -> torch.Tensor:
        """The call by this probe's candidate, timed: as one autograd node where anything needs a
        gradient (its backward is then part of the sample), else a forward alone."""
        call = _Call(self, run, x, operands)
        tensors = call.tensors(x, operands)
        if not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
            start = time.perf_counter()
            out = call.function(x, *operands)
            self.forward_s = time.perf_counter() - start
            return out
        self.needs_backward = True
        return _Sampled.apply(call, *tensors)


def execute(probe: Probe, run: Dict[str, Callable[..., torch.Tensor]], x, operands: Sequence) -> torch.Tensor:
    """The call, run by the probe's candidate (``run``: implementation → function) and timed; a
    candidate that raises, in its forward or its backward, drops out and another one computes the call."""
    try:
        return probe.run(run, x, operands)
    except Exception as error:  # noqa: BLE001 - any failure of a candidate just drops it
        instead = probe.sampler.failed(probe.implementation, error)
        if instead is None:
            raise
        return run[instead](x, *operands)


class Sampler:
    """The samples of one layer shape, until they decide. ``prior``: the fixed rules' choice, warmed up
    first and run by the calls no candidate needs before any sample is in."""

    def __init__(self, options: List[str], prior: str):
        self.options = sorted(options, key=lambda impl: impl != prior)
        self.prior = prior
        self.samples: Dict[str, List[float]] = {impl: [] for impl in options}
        self.warm_up_s: Dict[str, float] = {}
        self.pending: List[Probe] = []
        self.errors: Dict[str, str] = {}
        self.overhead_s = 0.0  # the sampled calls' time beyond the fastest candidate's, once decided

    def alive(self) -> List[str]:
        """The candidates not dropped out by a failure."""
        return [impl for impl in self.options if impl not in self.errors]

    def _harvest(self) -> None:
        done = [i for i, p in enumerate(self.pending) if p.done]
        if done:  # calls issued before a completed one whose backward has not run: thrown away, never will
            self.pending = [p for i, p in enumerate(self.pending) if i > done[-1] or p.done]
        for probe in [p for p in self.pending if p.done]:
            self.pending.remove(probe)
            if probe.implementation not in self.warm_up_s:  # a candidate's first completed call warms it up
                self.warm_up_s[probe.implementation] = probe.seconds
            else:
                self.samples[probe.implementation].append(probe.seconds)

    def _dropped(self, alive: List[str]) -> set:
        """Candidates whose warm-up alone shows them far slower: not sampled. Only on layers where a
        warm-up's one-time costs (kernel creation, index tables) are small next to the call."""
        if not all(impl in self.warm_up_s for impl in alive):
            return set()
        fastest = min(self.warm_up_s[impl] for impl in alive)
        if fastest < CHEAP_S:
            return set()
        return {impl for impl in alive if self.warm_up_s[impl] > WARM_UP_DROP * fastest}

    def _needed(self) -> Dict[str, int]:
        """Samples each live candidate needs, as far as the warm-ups and samples so far tell."""
        alive = self.alive()
        dropped = self._dropped(alive)
        live = [impl for impl in alive if impl not in dropped]
        needed = dict.fromkeys(dropped, 0)
        if not all(self.samples[impl] for impl in live):
            return dict(needed, **dict.fromkeys(live, 1))
        return dict(needed, **samples_wanted({impl: min(self.samples[impl]) for impl in live}))

    def decision(self) -> Optional[dict]:
        """The decision, in the routing cache's form, once the samples settle it (None before)."""
        self._harvest()
        alive = self.alive()
        if (not alive or any(impl not in self.warm_up_s for impl in alive)
                or any(len(self.samples[impl]) < n for impl, n in self._needed().items())):
            return None
        best = {impl: min(self.samples[impl]) for impl in alive if self.samples[impl]}
        fastest = min(best.values())
        self.overhead_s = sum(t - fastest for impl in alive for t in self.samples[impl] + [self.warm_up_s[impl]])
        shown = {impl: best.get(impl, self.warm_up_s[impl]) for impl in alive}  # not sampled: its warm-up
        return decision_record(shown, self.errors, among=best)

    def next_call(self) -> Optional[Probe]:
        """The probe this call should run: a candidate that still needs its warm-up or a sample (the one
        with the fewest so far); None when every one waits for its backward (then the call runs
        :meth:`leading`, untimed)."""
        self._harvest()
        alive = self.alive()
        for impl in alive:
            if impl not in self.warm_up_s and not any(p.implementation == impl for p in self.pending):
                return self._issue(impl, warm_up=True)
        needed = self._needed()
        waiting = {impl: len(self.samples[impl]) + sum(p.implementation == impl for p in self.pending)
                   for impl in needed}
        wanted = [impl for impl in needed if waiting[impl] < needed[impl]]
        if not wanted:
            return None
        return self._issue(min(wanted, key=waiting.get), warm_up=False)

    def _issue(self, implementation: str, warm_up: bool) -> Probe:
        probe = Probe(implementation, warm_up, self)
        self.pending.append(probe)
        del self.pending[:-MAX_PENDING]
        return probe

    def leading(self) -> str:
        """The fastest live candidate so far (the prior, or the first live one, before any sample)."""
        alive = self.alive()
        measured = {impl: min(self.samples[impl]) for impl in alive if self.samples[impl]}
        if measured:
            return min(measured, key=measured.get)
        return self.prior if self.prior in alive else alive[0]

    def failed(self, implementation: str, error: BaseException) -> Optional[str]:
        """Drop a candidate whose call raised; another live one to run the call instead (None: none left)."""
        self.errors[implementation] = f"{type(error).__name__}: {error}"
        self.pending = [p for p in self.pending if p.implementation != implementation]
        alive = self.alive()
        return self.leading() if alive else None
