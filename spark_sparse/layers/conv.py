"""Conv2d on active sites, in the four kinds SparK's backbones use (spark_sparse/routing/).

- 1×1 (any stride), ``matmul`` or ``pointwise-conv``: a matmul on the (N, C) matrix, by the BLAS or
  as oneDNN's / cuDNN's 1×1 conv (kernels/rows_linear.py); a strided one first picks each output's
  top-left child, which always lies in the same patch.
- kernel == stride, no padding (ConvNeXt 4×4/4 stem, 2×2/2 downsample), ``patchify``: each output's
  window is a block of its own patch tile, so the conv is a reshape of the tiles plus a matmul.
- depthwise k×k (ConvNeXt's 7×7): our kernels (kernels/depthwise.py), ``depthwise-table`` etc.
- any other k×k (3×3, 7×7/2 stem): a backend (``torch``, ``gather-conv``, ``tiles``, ``spconv``) on
  the geometry.
Which implementation runs is the router's decision (``routing.route``), made on every call from the
layer's request ('auto' or one implementation) and its input, and the router's table
(``routing.RUN``) runs it (layers/base.py ``RoutedModule``).
The weight keeps the dense (C_out, C_in/groups, kh, kw) layout so state dicts move unchanged.
"""
from __future__ import annotations


from torch import nn

from ..errors import UnsupportedLayerError
from ..geometry import maps_to_next_level
from ..routing import layer_kind
from ..spec import ConvSpec
from .base import RoutedConv


def backend_request(spec: ConvSpec, backend: str) -> str:
    """What a conv requests of the router for a user's ``backend``: a backend names how k×k convs run;
    1×1 and patchify convs have their own implementations and depthwise ones follow set_depthwise."""
    return backend if layer_kind(spec) == "table" else "auto"


class SparseConv2d(RoutedConv):
    def __init__(self, spec: ConvSpec, bias: bool, requested: str = "auto", path: str = "", initialise: bool = True):
        super().__init__(spec, (spec.out_channels, spec.in_channels // spec.groups, *spec.kernel), bias, path,
                         requested, initialise)

    def extra_repr(self) -> str:
        s = self.spec
        return (f"{s.in_channels}, {s.out_channels}, kernel_size={s.kernel}, stride={s.stride}, "
                f"padding={s.padding}, groups={s.groups}, bias={self.bias is not None}, "
                f"requested={self.requested!r}")

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
        return cls(spec, conv.bias is not None, backend_request(spec, backend), path,
                   initialise=False).loaded_from(conv)
