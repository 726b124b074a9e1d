"""Measured routing on the CPU: the training step's own calls are the samples.

Trials beside the step (measure.py) run every candidate's forward and one or two forward +
backward passes on top of the step: on a CPU encoder that is about three steps' worth of work,
once per machine. Here, while a layer shape is measured, each of its calls runs one candidate (in
turn) as the real computation and is timed: the forward directly, the backward by marks on its
input, parameters and output that record when autograd reaches them. Every candidate computes the
same numbers, so the steps stay correct; tuning costs only the slower candidates' extra time on the
calls that ran them, and the decision lands a few calls later.

The fixed rules' choice runs first. Each candidate's first completed call is a warm-up (the
library creates its kernels, the process first touches the memory), not a sample; one whose warm-up
took ``WARM_UP_DROP`` × the fastest warm-up is not sampled at all. After one sample of each, the
candidates slower than ``CLOSE`` × the fastest stop; the others get ``REPEATS`` samples (every
candidate ``CHEAP_REPEATS`` for layers under ``CHEAP_S``, where one preempted call on a busy machine
would otherwise decide), and the fastest sample decides. Calls that come while every wanted sample
waits for its backward run the fastest candidate so far, untimed. Samples are taken on whatever
call comes, so a sample may include building the batch's index tables for its candidate. A
candidate whose forward fails drops out and the call runs another one (a failure in its backward
fails that step, as any backward error does).
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .measure import CHEAP_S, decision_record, samples_wanted

# a candidate whose warm-up took this many times the fastest warm-up is not sampled
WARM_UP_DROP = 2.0
# calls still waiting for their backward are kept up to this many (a model only ever called with
# gradients and no backward cannot hold records forever); a call whose backward never ran is also
# dropped as soon as a later call's backward has completed
MAX_PENDING = 16


class _Mark(torch.autograd.Function):
    """Identity whose backward records the time autograd reached it (on a call's inputs: a view of
    each, which only the sampled call consumes)."""

    @staticmethod
    def forward(ctx, tensor, probe, slot):
        ctx.probe, ctx.slot = probe, slot
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        ctx.probe.stamp(ctx.slot)
        return grad, None, None


class Probe:
    """One timed call of one candidate: forward seconds, then when its backward started and ended."""

    def __init__(self, implementation: str, warm_up: bool, sampler: "Sampler"):
        self.implementation = implementation
        self.warm_up = warm_up
        self.sampler = sampler
        self.forward_s: Optional[float] = None
        self.ends_expected = 0
        self.started: Optional[float] = None
        self.ended: List[float] = []

    def stamp(self, slot: str) -> None:
        now = time.perf_counter()
        if slot == "start":
            if self.started is None:  # a second backward through the same graph is not a sample
                self.started = now
        elif len(self.ended) < self.ends_expected:
            self.ended.append(now)

    @property
    def done(self) -> bool:
        return self.forward_s is not None and (self.ends_expected == 0 or len(self.ended) == self.ends_expected)

    @property
    def seconds(self) -> float:
        backward = max(self.ended) - self.started if self.ends_expected and self.started is not None else 0.0
        return self.forward_s + backward

    def run(self, function: Callable[..., torch.Tensor], x, operands: Sequence) -> torch.Tensor:
        """``function(x, *operands)``, timed: the tensors that need gradients are marked on the way in
        (their backward ends the sample), the output on the way out (its backward starts it)."""
        def enter(t):
            if isinstance(t, torch.Tensor) and t.requires_grad and torch.is_grad_enabled():
                self.ends_expected += 1
                return _Mark.apply(t, self, "end")
            return t

        feats = enter(x.features)
        operands = [enter(t) for t in operands]
        start = time.perf_counter()
        out = function(x.replace(feats) if feats is not x.features else x, *operands)
        self.forward_s = time.perf_counter() - start
        if self.ends_expected and out.requires_grad:
            # a hook, not a view: the next layer may modify the output in place (an in-place ReLU)
            out.register_hook(lambda grad: self.stamp("start"))
        return out


def execute(probe: Probe, run: Dict[str, Callable[..., torch.Tensor]], x, operands: Sequence) -> torch.Tensor:
    """The call, run by the probe's candidate (``run``: implementation → function) and timed; a
    candidate that raises drops out and another one runs the call."""
    try:
        return probe.run(run[probe.implementation], x, operands)
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
