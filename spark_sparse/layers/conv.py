"""Conv2d on active sites, in the four kinds SparK's backbones use (spark_sparse/routing/).

- 1×1 (any stride), ``matmul``: a matmul on the (N, C) matrix (kernels/rows_linear: on the CPU, as
  oneDNN's 1×1 conv where that is faster); a strided one first picks each output's top-left child,
  which always lies in the same patch.
- kernel == stride, no padding (ConvNeXt 4×4/4 stem, 2×2/2 downsample), ``patchify``: each output's
  window is a block of its own patch tile, so the conv is a reshape of the tiles plus a matmul.
- depthwise k×k (ConvNeXt's 7×7): our kernels (kernels/depthwise.py), ``depthwise-<kernel>``.
- any other k×k (3×3, 7×7/2 stem): a backend (``torch``, ``tiles``, ``spconv``) on the geometry.
Which implementation runs is the router's decision (``routing.route``), made on every call from the
layer's request ('auto' or one implementation) and its input; this module only runs it.
The weight keeps the dense (C_out, C_in/groups, kh, kw) layout so state dicts move unchanged.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..backends import get_backend
from ..spec import ConvSpec, compute_dtype
from ..errors import UnsupportedLayerError
from ..features import SparseFeatures
from ..geometry import maps_to_next_level
from ..kernels.depthwise import sparse_depthwise_conv
from ..kernels.rows_linear import rows_linear
from ..routing import Route, Workload, depthwise_kernel_name, layer_kind, route
from .base import SparseModule


def _matmul(x: SparseFeatures, weight, bias, spec: ConvSpec) -> torch.Tensor:
    feats, step = x.features, spec.stride[0]
    if step > 1:
        feats = x.tiles()[:, ::step, ::step, :].reshape(-1, x.channels)
    return rows_linear(feats, weight.view(spec.out_channels, spec.in_channels), bias)


def _patchify(x: SparseFeatures, weight, bias, spec: ConvSpec) -> torch.Tensor:
    k = spec.stride[0]
    r = x.level.r // k
    t = x.tiles().view(-1, r, k, r, k, x.channels).permute(0, 1, 3, 2, 4, 5)
    w = weight.permute(0, 2, 3, 1).reshape(spec.out_channels, -1)
    return F.linear(t.reshape(-1, k * k * x.channels), w, bias)


def compute(implementation: str, x: SparseFeatures, weight: torch.Tensor, bias: Optional[torch.Tensor],
            spec: ConvSpec) -> torch.Tensor:
    """(N_out, C_out) outputs of the conv ``spec`` on ``x``, run by ``implementation``."""
    if implementation == "matmul":
        return _matmul(x, weight, bias, spec)
    if implementation == "patchify":
        return _patchify(x, weight, bias, spec)
    if implementation.startswith("depthwise-"):
        out = sparse_depthwise_conv(x, weight, spec, depthwise_kernel_name(implementation))
    else:
        out = get_backend(implementation).conv(x.features, weight, x.geometry, x.stride, spec)
    return out if bias is None else out + bias.to(out.dtype)


class SparseConv2d(SparseModule):
    def __init__(self, spec: ConvSpec, bias: bool, requested: str = "auto", path: str = ""):
        super().__init__()
        self.spec = spec
        self.requested = requested  # 'auto' or one of routing.IMPLEMENTATIONS
        self.routing: Optional[str] = None  # 'measured' / 'fixed'; None: the process default
        self.path = path
        kh, kw = spec.kernel
        self.weight = nn.Parameter(torch.empty(spec.out_channels, spec.in_channels // spec.groups, kh, kw))
        self.bias = nn.Parameter(torch.empty(spec.out_channels)) if bias else None

    def extra_repr(self) -> str:
        s = self.spec
        return (f"{s.in_channels}, {s.out_channels}, kernel_size={s.kernel}, stride={s.stride}, "
                f"padding={s.padding}, groups={s.groups}, bias={self.bias is not None}, "
                f"requested={self.requested!r}")

    @property
    def kind(self) -> str:
        """'pointwise', 'patchify', 'depthwise' or 'table' (see spark_sparse/routing/)."""
        return layer_kind(self.spec)

    def route_for(self, x: SparseFeatures, tune: bool = False) -> Route:
        """How this layer runs on ``x``. With ``tune``, measured routing may time the candidates on
        ``x`` now (forward + backward on detached copies: the layer's own gradients stay untouched)."""
        dtype = compute_dtype(x.features)
        trial = self._trial(x, x.features.requires_grad) if tune else None
        return route(self.spec, x.level.r, x.features.device, dtype, self.requested, routing=self.routing,
                     workload=Workload(x.geometry.batch), trial=trial)

    def _trial(self, x: SparseFeatures, input_grad: bool):
        def trial(implementation: str, backward: bool = True) -> None:
            feats = x.features.detach().requires_grad_(input_grad and backward)
            weight = self.weight.detach().requires_grad_(backward)
            with torch.set_grad_enabled(backward):
                out = compute(implementation, x.replace(feats), weight, None, self.spec)
                if backward:
                    out.backward(torch.ones_like(out))
        return trial

    def forward(self, x: SparseFeatures) -> SparseFeatures:
        s = self.spec
        if x.channels != s.in_channels:
            raise ValueError(f"{self.path}: expected {s.in_channels} input channels, got {x.channels}")
        implementation = self.route_for(x, tune=torch.is_grad_enabled()).implementation
        out = compute(implementation, x, self.weight, self.bias, s)
        return x.replace(out, stride=x.stride * s.stride[0])

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, path: str, backend: str = "auto") -> "SparseConv2d":
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise UnsupportedLayerError(path, conv, f"padding={conv.padding!r}, padding_mode={conv.padding_mode!r} "
                                                    f"(only explicit integer zero padding)")
        spec = ConvSpec(conv.in_channels, conv.out_channels, tuple(conv.kernel_size), tuple(conv.stride),
                        tuple(conv.padding), tuple(conv.dilation), conv.groups)
        if spec.stride[0] != spec.stride[1]:
            raise UnsupportedLayerError(path, conv, f"non-square stride {spec.stride}")
        if not all(maps_to_next_level(*v) for v in zip(spec.kernel, spec.stride, spec.padding, spec.dilation)):
            raise UnsupportedLayerError(
                path, conv, f"kernel {spec.kernel}, stride {spec.stride}, padding {spec.padding} does not map an "
                            f"image of size H to exactly H/stride (use 'same'-style padding, e.g. k//2)")
        if spec.groups != 1 and not spec.is_depthwise:
            raise UnsupportedLayerError(path, conv, f"groups={spec.groups}: only dense (1) or depthwise convs")
        # a backend names how k×k convs run; depthwise ones are chosen by set_depthwise
        sparse = cls(spec, conv.bias is not None, "auto" if spec.is_depthwise else backend, path)
        sparse.load_state_dict(conv.state_dict())
        return sparse.to(conv.weight)  # device and dtype
