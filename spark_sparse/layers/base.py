"""The marker class of layers that take SparseFeatures, and how containers call any child.

Per-site layers (activations, channels-last LayerNorm, Identity) need no sparse twin:
they run unchanged on the (N, C) feature matrix, so the converter keeps the dense module itself
and its state_dict keys stay those of the dense model.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..features import SparseFeatures
from ..recompute import run_recomputed
from ..routing import RUN, Route, RouteLog, Workload, replay, route, run_route
from ..spec import ConvSpec, compute_dtype


class SparseModule(nn.Module):
    """A layer whose forward takes and returns SparseFeatures."""


class RoutedModule(SparseModule):
    """A layer with several implementations (convs, Linears, max-pools), one of which the router picks on
    every call (spark_sparse/routing/) and this class runs.

    ``requested``: 'auto' or one implementation; ``routing``: 'measured' / 'fixed' (None: the
    process default). Subclasses give ``layer_spec`` (what the router reads of the layer) and
    ``operands`` (what ``routing.compute`` takes after the input).
    """
    requested = "auto"
    routing: Optional[str] = None

    def layer_spec(self, x: SparseFeatures):
        """The ConvSpec / PoolSpec of this layer on ``x``."""
        raise NotImplementedError

    def operands(self, x: SparseFeatures, trial_grad: Optional[bool] = None) -> tuple:
        """The arguments after ``x`` of the implementation's function. For a trial (``trial_grad`` not
        None) the parameters are detached copies that require grad or not, so that measured routing's
        trials leave the layer's own gradients alone."""
        raise NotImplementedError

    def route_for(self, x: SparseFeatures, tune: bool = False, spec=None) -> Route:
        """How this layer runs on ``x``. With ``tune``, measured routing may time the candidates: on
        CUDA now, on ``x`` (forward + backward on detached copies: the layer's own gradients stay
        untouched); on the CPU by making this call one of its samples (the route carries the probe)."""
        dtype = compute_dtype(x.features)
        return route(spec or self.layer_spec(x), x.level.r, x.features.device, dtype, self.requested,
                     routing=self.routing, workload=Workload(x.geometry.batch, x.features.shape[0]),
                     trial=self._trial(x) if tune else None)

    def run_routed(self, x: SparseFeatures) -> SparseFeatures:
        """The layer's output: its route on ``x`` (tuning where gradients are on), run (the route has
        checked that its implementation runs the layer, so it runs without a second check; a call that
        is one of measured routing's samples is timed)."""
        spec = self.layer_spec(x)
        route = replay.replayed_route(self)  # a recomputation runs what its checkpointed forward ran
        if route is None:
            route = self.route_for(x, tune=torch.is_grad_enabled() and not replay.checkpointed(), spec=spec)
            replay.record(self, route)
        out = run_route(route, x, self.operands(x))
        return x.replace(out, stride=x.stride * spec.stride[0])

    def _trial(self, x: SparseFeatures):
        # a layer without parameters needs its input's gradient for a backward to run at all
        input_grad = x.features.requires_grad or not any(True for _ in self.parameters())

        def trial(implementation: str, backward: bool = True) -> None:  # on CUDA (routing/measure.py)
            feats = x.features.detach().requires_grad_(input_grad and backward)
            with torch.set_grad_enabled(backward):
                out = RUN[implementation](x.replace(feats), *self.operands(x, trial_grad=backward))
                if backward:
                    out.backward(torch.ones_like(out))
        return trial


class RoutedConv(RoutedModule):
    """A routed layer that computes a convolution: a conv, or a Linear, which on the (N, C) rows is a
    1×1 conv. It has a ConvSpec ``spec``, a ``weight`` in its dense layer's layout (the implementations
    reshape it) and an optional ``bias``."""

    def __init__(self, spec: ConvSpec, weight_shape: tuple, bias: bool, path: str = "", requested: str = "auto",
                 initialise: bool = True):
        super().__init__()
        self.spec = spec
        self.requested = requested  # 'auto' or one of routing.IMPLEMENTATIONS
        self.routing: Optional[str] = None  # 'measured' / 'fixed'; None: the process default
        self.path = path
        self.weight = nn.Parameter(torch.empty(weight_shape))
        self.bias = nn.Parameter(torch.empty(spec.out_channels)) if bias else None
        if initialise:  # not when a dense layer's parameters replace them at once (from_dense)
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch's own initialisation of a Conv2d or Linear (Kaiming-uniform weight, bias uniform in
        ±1/√fan_in), so a layer built directly, not from a dense one, holds no uninitialised memory.
        Converting a dense model skips it: its draws would move the random stream, and with it the
        initialisation of whatever is built after the encoder (SparK's decoder), away from a run with
        the masked-dense encoder."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight[0].numel()) if self.weight[0].numel() else 0.0
            nn.init.uniform_(self.bias, -bound, bound)

    def loaded_from(self, dense: nn.Module) -> "RoutedConv":
        """This layer with ``dense``'s parameters (same names and shapes), on its device and dtype."""
        self.load_state_dict(dense.state_dict())
        return self.to(dense.weight)

    def layer_spec(self, x: SparseFeatures) -> ConvSpec:
        return self.spec

    def operands(self, x: SparseFeatures, trial_grad: Optional[bool] = None) -> tuple:
        if trial_grad is None:
            return self.weight, self.bias, self.spec
        return self.weight.detach().requires_grad_(trial_grad), None, self.spec

    def forward(self, x: SparseFeatures) -> SparseFeatures:
        if x.channels != self.spec.in_channels:
            raise ValueError(f"{self.path}: expected {self.spec.in_channels} input channels, got {x.channels}")
        return self.run_routed(x)


def run_checkpointed(module: nn.Module, function, *args):
    """``function(*args)`` under activation checkpointing (recompute.py), its routed layers running the
    same implementations in the recomputation as in the forward (routing/replay.py)."""
    return run_recomputed(module, function, *args, replay=RouteLog().contexts)


def run_layer(module: nn.Module, x: SparseFeatures) -> SparseFeatures:
    """Call a sparse layer on ``x``, or a per-site dense layer on its feature matrix."""
    if isinstance(module, SparseModule):
        return module(x)
    return x.replace(module(x.features))
