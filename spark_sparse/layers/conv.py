"""Conv2d on active sites, in the four shapes SparK's backbones use.

- 1×1 (any stride): a matmul on the (N, C) matrix; a strided one first picks each output's
  top-left child, which always lies in the same patch.
- kernel == stride, no padding (ConvNeXt 4×4/4 stem, 2×2/2 downsample): each output's window is a
  block of its own patch tile, so the conv is a reshape of the tiles plus a matmul.
- depthwise k×k (ConvNeXt's 7×7): our kernels (kernels/depthwise.py), whichever is fastest for
  the layer's resolution unless ``depthwise`` names one; spconv has no groups, so the
  ``backend`` choice does not apply to them.
- any other k×k (3×3, 7×7/2 stem): a backend (``torch``, ``spconv``, …) on the geometry's index
  tables.
The weight keeps the dense (C_out, C_in/groups, kh, kw) layout so state dicts move unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backends import resolve_backend
from ..spec import ConvSpec
from ..errors import UnsupportedLayerError
from ..features import SparseFeatures
from ..geometry import maps_to_next_level
from ..kernels.depthwise import sparse_depthwise_conv
from .base import SparseModule


class SparseConv2d(SparseModule):
    def __init__(self, spec: ConvSpec, bias: bool, backend: str = "auto", path: str = "", depthwise: str = "auto"):
        super().__init__()
        self.spec = spec
        self.backend = backend
        self.depthwise = depthwise  # implementation of depthwise convs (kernels.depthwise.IMPLS)
        self.path = path
        kh, kw = spec.kernel
        self.weight = nn.Parameter(torch.empty(spec.out_channels, spec.in_channels // spec.groups, kh, kw))
        self.bias = nn.Parameter(torch.empty(spec.out_channels)) if bias else None

    def extra_repr(self) -> str:
        s = self.spec
        return (f"{s.in_channels}, {s.out_channels}, kernel_size={s.kernel}, stride={s.stride}, "
                f"padding={s.padding}, groups={s.groups}, bias={self.bias is not None}, "
                + (f"depthwise={self.depthwise!r}" if self.kind == "depthwise" else f"backend={self.backend!r}"))

    @property
    def kind(self) -> str:
        """Which of the four shapes of conv this is (see the module docstring)."""
        s = self.spec
        if s.kernel == (1, 1) and s.padding == (0, 0) and s.groups == 1:
            return "pointwise"
        if s.kernel == s.stride and s.padding == (0, 0) and s.dilation == (1, 1) and s.groups == 1:
            return "patchify"
        if s.is_depthwise:
            return "depthwise"
        return "table"

    def kind_at(self, r: int) -> str:
        """:attr:`kind` on input patch blocks of r×r sites: a patchify conv whose window does not
        fit a block reads its neighbours through the table instead."""
        if self.kind == "patchify" and r % self.spec.stride[0]:
            return "table"
        return self.kind

    def forward(self, x: SparseFeatures) -> SparseFeatures:
        s = self.spec
        if x.channels != s.in_channels:
            raise ValueError(f"{self.path}: expected {s.in_channels} input channels, got {x.channels}")
        step = s.stride[0]
        kind = self.kind_at(x.level.r)
        if kind == "pointwise":
            feats = x.features
            if step > 1:
                feats = x.tiles()[:, ::step, ::step, :].reshape(-1, x.channels)
            out = F.linear(feats, self.weight.view(s.out_channels, s.in_channels), self.bias)
        elif kind == "patchify":
            k = step
            r = x.level.r // k
            t = x.tiles().view(-1, r, k, r, k, x.channels).permute(0, 1, 3, 2, 4, 5)
            w = self.weight.permute(0, 2, 3, 1).reshape(s.out_channels, -1)
            out = F.linear(t.reshape(-1, k * k * x.channels), w, self.bias)
        elif kind == "depthwise":
            out = sparse_depthwise_conv(x, self.weight, s, self.depthwise)
            if self.bias is not None:
                out = out + self.bias.to(out.dtype)
        else:
            backend = resolve_backend(self.backend, s, x.features, x.level.r)
            out = backend.conv(x.features, self.weight, x.geometry, x.stride, s)
            if self.bias is not None:
                out = out + self.bias.to(out.dtype)
        return x.replace(out, stride=x.stride * step)

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
        sparse = cls(spec, conv.bias is not None, backend, path)
        sparse.load_state_dict(conv.state_dict())
        return sparse.to(conv.weight)  # device and dtype
