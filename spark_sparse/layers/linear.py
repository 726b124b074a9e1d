"""nn.Linear on the active rows, routed like a 1×1 conv (spark_sparse/routing/).

On the (N, C) feature matrix a Linear is exactly a stride-1 1×1 conv, so it has a 1×1 conv's two
implementations (kernels/rows_linear.py): the BLAS matmul (``F.linear``, what the dense model runs)
and the same rows as oneDNN's / cuDNN's 1×1 convolution. Which one is faster depends on the machine:
on a 2-core AMD EPYC of the Zen 5 family, fp32 ConvNeXt-T's MLP Linears (most of its encoder's
MACs) ran 1.6–2× faster forward + backward as oneDNN convolutions (stage 1's fc1: 20.5 against
32.7 ms); in bf16 the matmul was as fast or faster. So the router decides per layer, measured
on the user's machine. The weight keeps nn.Linear's (out, in) layout and name, so state dicts move
unchanged between the dense model, this encoder and exported checkpoints.
"""
from __future__ import annotations

from torch import nn

from ..spec import ConvSpec
from .base import RoutedConv


class SparseLinear(RoutedConv):
    def __init__(self, in_features: int, out_features: int, bias: bool, path: str = "", initialise: bool = True):
        super().__init__(ConvSpec(in_features, out_features, (1, 1), (1, 1), (0, 0), (1, 1), 1),
                         (out_features, in_features), bias, path, initialise=initialise)

    @property
    def in_features(self) -> int:
        return self.spec.in_channels

    @property
    def out_features(self) -> int:
        return self.spec.out_channels

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    @classmethod
    def from_dense(cls, linear: nn.Linear, path: str) -> "SparseLinear":
        return cls(linear.in_features, linear.out_features, linear.bias is not None, path,
                   initialise=False).loaded_from(linear)
