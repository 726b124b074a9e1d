"""The ``torch`` backend: gather → GEMM on index tables, in plain PyTorch.

Runs on any device, thread count and dtype, and is the semantic oracle for the other backends.
Forward gathers every kernel offset's input rows into an (N_out, K·C_in) matrix and does one GEMM;
backward gets the input gradient by gathering through the inverse table (again one GEMM, no
scatter-add, so the result does not depend on the thread count) and recomputes the gathered
inputs for the weight gradient instead of keeping them (less memory).
"""
from __future__ import annotations

import torch

from ..geometry import ConvTable, Geometry
from ..kernels.depthwise import table_depthwise
from ..kernels.gather import gather_rows  # noqa: F401  (re-exported: layers import it from here)
from .base import ConvBackend, ConvSpec, compute_dtype


class _GatherGemmConv(torch.autograd.Function):
    """Dense-weight (groups=1) convolution on a ConvTable."""

    @staticmethod
    def forward(ctx, x, w, table: ConvTable):
        # w: (K, C_in, C_out)
        k, c_in, c_out = w.shape
        cols = gather_rows(x, table.gather).view(-1, k * c_in)
        ctx.table = table
        ctx.save_for_backward(x, w)
        return cols @ w.reshape(k * c_in, c_out)

    @staticmethod
    def backward(ctx, grad_out):
        x, w = ctx.saved_tensors
        table: ConvTable = ctx.table
        k, c_in, c_out = w.shape
        grad_out = grad_out.contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            gcols = gather_rows(grad_out, table.scatter).view(-1, k * c_out)
            grad_x = gcols @ w.transpose(1, 2).reshape(k * c_out, c_in)
        if ctx.needs_input_grad[1]:
            cols = gather_rows(x, table.gather).view(-1, k * c_in)
            grad_w = (cols.t() @ grad_out).view(k, c_in, c_out)
        return grad_x, grad_w, None


def table_conv(x: torch.Tensor, weight: torch.Tensor, table: ConvTable, groups: int = 1) -> torch.Tensor:
    """Convolve (N_in, C_in) features with a dense-layout weight on a neighbour table."""
    dtype = compute_dtype(x)
    x = x.to(dtype)
    c_out = weight.shape[0]
    if groups == 1:
        w = weight.to(dtype).permute(2, 3, 1, 0).reshape(-1, weight.shape[1], c_out)
        return _GatherGemmConv.apply(x.contiguous(), w, table)
    if groups == x.shape[1] == c_out and weight.shape[1] == 1:
        return table_depthwise(x, weight.to(dtype), table)  # the twin in kernels/depthwise.py
    raise NotImplementedError(f"grouped convolution with groups={groups} (only 1 or depthwise)")


class TorchBackend(ConvBackend):
    name = "torch"

    def unsupported(self, spec, x):
        if spec.groups != 1 and not spec.is_depthwise:
            return f"groups={spec.groups} is neither 1 nor depthwise"
        return None

    def conv(self, x, weight, geometry: Geometry, in_stride: int, spec: ConvSpec):
        table = geometry.conv_table(in_stride, spec.kernel, spec.stride, spec.padding, spec.dilation)
        return table_conv(x, weight, table, spec.groups)
