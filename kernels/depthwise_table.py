"""The plain-PyTorch twin of the sparse depthwise convolution: a weighted sum over a ConvTable.

Below both the implementation choice (kernels/depthwise.py) and the Triton kernels
(kernels/depthwise_triton.py), which share its weight layout and are tested against it.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..geometry import ConvTable
from .gather import with_fill_rows


WeightedSum = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, int], torch.Tensor]
WeightGrad = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, int], torch.Tensor]


def table_conv_function(name: str, doc: str, weighted_sum: WeightedSum, weight_grad: WeightGrad) -> type:
    """An autograd Function ``(x (N_in, C), w (K, C), table) -> (N_out, C)`` made of weighted gathers.

    Forward ``weighted_sum(x, w, table.gather, n_out, n_in)`` (an index equal to the last argument
    reads zero); input gradient the same sum through the inverse table, so no scatter-add; weight
    gradient ``weight_grad(x, grad_out, table.gather, n_in, K)``. The twin below and the Triton
    kernels differ only in these two functions.
    """
    def forward(ctx, x, w, table: ConvTable):
        ctx.table = table
        ctx.save_for_backward(x, w)
        return weighted_sum(x, w, table.gather, table.n_out, table.n_in)

    def backward(ctx, grad_out):
        x, w = ctx.saved_tensors
        table: ConvTable = ctx.table
        grad_out = grad_out.contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = weighted_sum(grad_out, w, table.scatter, table.n_in, table.n_out)
        if ctx.needs_input_grad[1]:
            grad_w = weight_grad(x, grad_out, table.gather, table.n_in, w.shape[0]).to(w.dtype)
        return grad_x, grad_w, None

    class TableConvFunction(torch.autograd.Function):
        pass

    TableConvFunction.forward = staticmethod(forward)
    TableConvFunction.backward = staticmethod(backward)
    TableConvFunction.__name__ = TableConvFunction.__qualname__ = name
    TableConvFunction.__doc__ = doc
    return TableConvFunction


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _offset_sum(x: torch.Tensor, w: torch.Tensor, index: torch.Tensor, n_rows: int, sentinel: int) -> torch.Tensor:
    """Σ_k w[k] · x[index[:, k]] → (n_rows, C), one offset at a time, accumulated in ≥ fp32 (the sentinel
    index ``len(x)`` reads the appended zero row)."""
    rows, per_offset = with_fill_rows(x), index.t().contiguous()
    out = x.new_zeros(index.shape[0], x.shape[1], dtype=_accumulate_dtype(x.dtype))
    for k in range(per_offset.shape[0]):
        out.addcmul_(rows.index_select(0, per_offset[k]), w[k])
    return out.to(x.dtype)


def _offset_weight_grad(x: torch.Tensor, grad_out: torch.Tensor, index: torch.Tensor, n_in: int,
                        k: int) -> torch.Tensor:
    """grad_w[k] = Σ_n x[index[n, k]] · grad_out[n] → (K, C) in ≥ fp32."""
    acc = _accumulate_dtype(x.dtype)
    rows, per_offset, g = with_fill_rows(x), index.t().contiguous(), grad_out.to(acc)
    return torch.stack([(rows.index_select(0, per_offset[k]).to(acc) * g).sum(0) for k in range(per_offset.shape[0])])


TableDepthwiseConv = table_conv_function("TableDepthwiseConv", """Depthwise conv on a ConvTable:
``out[n, c] = Σ_k w[k, c] · x[gather[n, k], c]``, ``w`` (K, C).

The input gradient reads the output gradient through the inverse table (``grad_x[i, c] = Σ_k w[k, c] ·
grad_out[scatter[i, k], c]``), so no scatter-add. One kernel offset at a time: an (N, K, C) gathered
tensor would be K times the features (200 MB for one ConvNeXt-T stride-4 layer at batch 8), and the
loop measured 2.5-10x faster than building it and reducing (and ``einsum`` on it slower still).
fp16 / bf16 accumulate in fp32.""", _offset_sum, _offset_weight_grad)


def depthwise_weight_kc(weight: torch.Tensor) -> torch.Tensor:
    """Dense depthwise weight (C, 1, kh, kw) → (K, C), the layout of the table kernels."""
    return weight.reshape(weight.shape[0], -1).t()


def table_depthwise(features: torch.Tensor, weight: torch.Tensor, table: ConvTable) -> torch.Tensor:
    """The twin on an explicit table: (N_in, C) features, dense-layout weight → (N_out, C)."""
    return TableDepthwiseConv.apply(features.contiguous(), depthwise_weight_kc(weight), table)
