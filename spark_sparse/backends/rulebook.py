"""The ``torch`` backend: gather → GEMM on index tables, in plain PyTorch.

Runs on any device, thread count and dtype, and is the semantic oracle for the other backends.
Forward gathers every kernel offset's input rows into an (N_out, K·C_in) matrix and does one GEMM;
backward gets the input gradient by gathering through the inverse table for stride 1 (again
one GEMM, no scatter-add, so the result does not depend on the thread count) and, for strided
convs, whose inverse table is mostly empty, by one GEMM plus one collision-free index-add per
kernel offset; it recomputes the gathered inputs for the weight gradient instead of keeping them
(less memory).
"""
from __future__ import annotations

import torch

from ..features import SparseFeatures
from ..geometry import ConvTable
from ..kernels.gather import gather_rows
from ..spec import ConvSpec, compute_dtype


class _GatherGemmConv(torch.autograd.Function):
    """Dense-weight (groups=1) convolution on a ConvTable.

    The weight is (C_out, K·C_in): the dense (C_out, C_in, kh, kw) weight with each output
    channel's block reordered offset-major. That reorder moves only within one output channel's
    row (cache-friendly), and every GEMM below reads the weight as is or transposed (free in BLAS),
    so neither the forward nor the weight gradient copies a (K, C_in, C_out) transpose.
    """

    @staticmethod
    def forward(ctx, x, w, table: ConvTable):
        c_out, kc = w.shape
        cols = gather_rows(x, table.gather).view(-1, kc)
        ctx.table = table
        ctx.save_for_backward(x, w)
        return cols @ w.t()

    @staticmethod
    def backward(ctx, grad_out):
        x, w = ctx.saved_tensors
        table: ConvTable = ctx.table
        c_out, kc = w.shape
        grad_out = grad_out.contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _input_grad_strided(grad_out, w, table) if table.n_in > table.n_out \
                else _input_grad_inverse(grad_out, w, table)
        if ctx.needs_input_grad[1]:
            cols = gather_rows(x, table.gather).view(-1, kc)
            grad_w = grad_out.t() @ cols
        return grad_x, grad_w, None


def _input_grad_inverse(grad_out, w, table: ConvTable):
    """Stride 1: every input is read at (almost) every offset, so gather through the inverse table."""
    c_out, kc = w.shape
    k = table.gather.shape[1]
    gcols = gather_rows(grad_out, table.scatter).view(-1, k * c_out)
    return gcols @ w.view(c_out, k, kc // k).transpose(0, 1).reshape(k * c_out, kc // k)


def _input_grad_strided(grad_out, w, table: ConvTable):
    """Strided: an input is read at only ~K/stride² offsets, so the inverse table is mostly sentinels
    (a 3×3/2 conv would pay 4× its forward GEMM). Instead one GEMM per output row gives every
    offset's contribution, added to its input row offset by offset: within one offset no input row
    repeats, so the sums are the same for any thread count and device."""
    c_out, kc = w.shape
    k = table.gather.shape[1]
    contrib = (grad_out @ w).view(-1, k, kc // k)
    grad_x = grad_out.new_zeros(table.n_in + 1, kc // k)  # the last row takes masked/border reads
    for offset in range(k):
        grad_x.index_add_(0, table.gather[:, offset], contrib[:, offset])
    return grad_x[:-1]


def table_conv(x: torch.Tensor, weight: torch.Tensor, table: ConvTable) -> torch.Tensor:
    """Convolve (N_in, C_in) features with a dense-layout (groups = 1) weight on a neighbour table."""
    dtype = compute_dtype(x)
    c_out = weight.shape[0]
    w = weight.to(dtype).permute(0, 2, 3, 1).reshape(c_out, -1)  # (C_out, K·C_in), offset-major
    return _GatherGemmConv.apply(x.to(dtype).contiguous(), w, table)


def torch_conv(x: SparseFeatures, weight: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    """The ``torch`` backend: (N_out, C_out) outputs at the next stride's active sites, no bias."""
    table = x.geometry.conv_table(x.stride, spec.kernel, spec.stride, spec.padding, spec.dilation)
    return table_conv(x.features, weight, table)
