"""The ``torch`` backend: gather → GEMM on index tables, in plain PyTorch.

Runs on any device, thread count and dtype, and is the semantic oracle for the other backends.
Forward gathers every kernel offset's input rows into an (N_out, K·C_in) matrix and does one GEMM;
backward gets the input gradient by gathering through the inverse table for stride 1 (again
one GEMM, no scatter-add, so the result does not depend on the thread count) and, for strided
convs, whose inverse table is mostly empty, by one GEMM plus one collision-free index-add per
kernel offset; it recomputes the gathered inputs for the weight gradient instead of keeping them
(less memory).

``gather_conv`` is the same computation with its forward and input-gradient GEMMs run as oneDNN's /
cuDNN's 1×1 convolutions (kernels/rows_linear.py) instead of the BLAS: on a Zen 5 EPYC in fp32 those
two ran about 2× faster at resnet50's stride-16 and -32 shapes, while the weight gradient (a GEMM
whose reduction runs over all rows) was not faster as a convolution and stays a BLAS GEMM. Which
of the two a layer runs is the router's decision.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..features import SparseFeatures
from ..geometry import ConvTable
from ..kernels.gather import gather_rows
from ..kernels.rows_linear import rows_conv1x1
from ..spec import ConvSpec, compute_dtype


class _GatherGemmConv(torch.autograd.Function):
    """Dense-weight (groups=1) convolution on a ConvTable.

    The weight is (C_out, K·C_in): the dense (C_out, C_in, kh, kw) weight with each output
    channel's block reordered offset-major. That reorder moves only within one output channel's
    row (cache-friendly), and every GEMM below reads the weight as is or transposed (free in BLAS),
    so neither the forward nor the weight gradient copies a (K, C_in, C_out) transpose.
    """

    @staticmethod
    def forward(ctx, x, w, table: ConvTable, rows_times: Callable):
        c_out, kc = w.shape
        cols = gather_rows(x, table.gather).view(-1, kc)
        ctx.table, ctx.rows_times = table, rows_times
        ctx.save_for_backward(x, w)
        # rows_conv1x1 returns a view of the convolution's output; autograd refuses in-place use of a
        # view a Function returns (a ReLU(inplace) next), and detach() ends the view relation, no copy
        return rows_times(cols, w).detach()

    @staticmethod
    def backward(ctx, grad_out):
        x, w = ctx.saved_tensors
        table: ConvTable = ctx.table
        c_out, kc = w.shape
        grad_out = grad_out.contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _input_grad_strided(grad_out, w, table, ctx.rows_times) if table.n_in > table.n_out \
                else _input_grad_inverse(grad_out, w, table, ctx.rows_times)
        if ctx.needs_input_grad[1]:
            cols = gather_rows(x, table.gather).view(-1, kc)
            grad_w = grad_out.t() @ cols
        return grad_x, grad_w, None, None


def blas_rows_times(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``rows @ weight.t()`` by the BLAS."""
    return rows @ weight.t()


def _input_grad_inverse(grad_out, w, table: ConvTable, rows_times: Callable):
    """Stride 1: every input is read at (almost) every offset, so gather through the inverse table."""
    c_out, kc = w.shape
    k = table.gather.shape[1]
    gcols = gather_rows(grad_out, table.scatter).view(-1, k * c_out)
    return rows_times(gcols, w.view(c_out, k, kc // k).permute(2, 1, 0).reshape(kc // k, k * c_out))


def _input_grad_strided(grad_out, w, table: ConvTable, rows_times: Callable):
    """Strided: an input is read at only ~K/stride² offsets, so the inverse table is mostly sentinels
    (a 3×3/2 conv would pay 4× its forward GEMM). Instead one GEMM per output row gives every
    offset's contribution, added to its input row offset by offset: within one offset no input row
    repeats, so the sums are the same for any thread count and device."""
    c_out, kc = w.shape
    k = table.gather.shape[1]
    contrib = rows_times(grad_out, w.t()).view(-1, k, kc // k)
    grad_x = grad_out.new_zeros(table.n_in + 1, kc // k)  # the last row takes masked/border reads
    for offset in range(k):
        grad_x.index_add_(0, table.gather[:, offset], contrib[:, offset])
    return grad_x[:-1]


def table_conv(x: torch.Tensor, weight: torch.Tensor, table: ConvTable,
               rows_times: Callable = blas_rows_times) -> torch.Tensor:
    """Convolve (N_in, C_in) features with a dense-layout (groups = 1) weight on a neighbour table;
    ``rows_times(rows, weight)`` computes the forward's and the input gradient's ``rows @ weight.t()``."""
    dtype = compute_dtype(x)
    c_out = weight.shape[0]
    w = weight.to(dtype).permute(0, 2, 3, 1).reshape(c_out, -1)  # (C_out, K·C_in), offset-major
    return _GatherGemmConv.apply(x.to(dtype).contiguous(), w, table, rows_times)


def torch_conv(x: SparseFeatures, weight: torch.Tensor, spec: ConvSpec,
               rows_times: Callable = blas_rows_times) -> torch.Tensor:
    """The ``torch`` backend: (N_out, C_out) outputs at the next stride's active sites, no bias."""
    table = x.geometry.conv_table(x.stride, spec.kernel, spec.stride, spec.padding, spec.dilation)
    return table_conv(x.features, weight, table, rows_times)


def gather_conv(x: SparseFeatures, weight: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    """``torch_conv`` with its forward and input-gradient GEMMs as 1×1 convolutions (``gather-conv``)."""
    return torch_conv(x, weight, spec, rows_conv1x1)
