"""The convs that are one matmul on the visible rows: 1×1 convs (``pointwise_matmul``,
``pointwise_conv``) and kernel == stride convs on patch blocks (``patchify_matmul``).

Each takes (x, the dense-layout weight, bias, spec) and returns (N_out, C_out) with the bias added.

The encoder's 1×1 convs are matmuls on the visible rows: tall (thousands of rows) and narrow (64–512
channels). On the CPU in fp32 torch sends ``F.linear`` to the BLAS (MKL), while its convolutions go
to oneDNN, which runs these shapes faster on some CPUs: on this project's AMD EPYC, 20480 × 64 → 256
forward + backward takes 20 ms as a 1×1 convolution against 30 ms as a matmul, and the resnet50
encoder's forward + backward at batch 16 drops by 5 %. The rows already are a channels-last
(1, C, N, 1) image, so the convolution reads them without a copy. Both compute the same sums in a
different order: fp32 results differ at rounding level. Which one runs a layer is the router's
decision (spark_sparse/routing/rules.py has the fixed rule and its threshold).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..features import SparseFeatures
from ..spec import ConvSpec


def rows_conv1x1(rows: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(rows, weight, bias)`` for (N, C_in) rows and a (C_out, C_in) ``weight``, computed as
    a 1×1 convolution of the rows seen as a (1, C_in, N, 1) channels-last image: (N, C_out), contiguous."""
    n, c = rows.shape
    if n == 0:  # a batch without visible patches: the convolution refuses an empty image
        return F.linear(rows, weight.reshape(weight.shape[0], c), bias)
    image = rows.contiguous().view(1, n, 1, c).permute(0, 3, 1, 2)  # (1, C, N, 1), channels-last strides
    out = F.conv2d(image, weight.reshape(weight.shape[0], c, 1, 1), bias)
    return out.permute(0, 2, 3, 1).reshape(n, weight.shape[0])


def pointwise_rows(x: SparseFeatures, spec: ConvSpec) -> torch.Tensor:
    """The input row of each output of a 1×1 conv: all rows, or for a strided one each output's
    top-left child (it always lies in the same patch)."""
    step = spec.stride[0]
    if step == 1:
        return x.features
    return x.tiles()[:, ::step, ::step, :].reshape(-1, x.channels)


def pointwise_matmul(x: SparseFeatures, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     spec: ConvSpec) -> torch.Tensor:
    return F.linear(pointwise_rows(x, spec), weight.view(spec.out_channels, spec.in_channels), bias)


def pointwise_conv(x: SparseFeatures, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   spec: ConvSpec) -> torch.Tensor:
    return rows_conv1x1(pointwise_rows(x, spec), weight.view(spec.out_channels, spec.in_channels), bias)


def patchify_matmul(x: SparseFeatures, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    spec: ConvSpec) -> torch.Tensor:
    """A kernel == stride conv: a reshape of each patch's block into its outputs' windows, one matmul."""
    k = spec.stride[0]
    r = x.level.r // k
    t = x.tiles().view(-1, r, k, r, k, x.channels).permute(0, 1, 3, 2, 4, 5)
    w = weight.permute(0, 2, 3, 1).reshape(spec.out_channels, -1)
    return F.linear(t.reshape(-1, k * k * x.channels), w, bias)
