"""The plain-PyTorch twin of the sparse depthwise convolution: a weighted sum over a ConvTable.

Below both the implementation choice (kernels/depthwise.py) and the Triton kernels
(kernels/depthwise_triton.py), which share its weight layout and are tested against it.
"""
from __future__ import annotations

import torch

from ..geometry import ConvTable


class TableDepthwiseConv(torch.autograd.Function):
    """Depthwise conv on a ConvTable: ``out[n, c] = Σ_k w[k, c] · x[gather[n, k], c]``.

    ``w`` is (K, C). The input gradient reads the output gradient through the inverse table
    (``grad_x[i, c] = Σ_k w[k, c] · grad_out[scatter[i, k], c]``), so no scatter-add. One kernel
    offset at a time: an (N, K, C) gathered tensor would be K times the features (200 MB for one
    ConvNeXt-T stride-4 layer at batch 8), and the loop measured 2.5-10x faster than building it
    and reducing (and ``einsum`` on it slower still). fp16 / bf16 accumulate in fp32.
    """

    @staticmethod
    def forward(ctx, x, w, table: ConvTable):
        ctx.table = table
        ctx.save_for_backward(x, w)
        return _offset_sum(x, table.gather, w)

    @staticmethod
    def backward(ctx, grad_out):
        x, w = ctx.saved_tensors
        table: ConvTable = ctx.table
        grad_out = grad_out.contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _offset_sum(grad_out, table.scatter, w)
        if ctx.needs_input_grad[1]:
            grad_w = _offset_weight_grad(x, table.gather, grad_out).to(w.dtype)
        return grad_x, grad_w, None


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _padded(x: torch.Tensor) -> torch.Tensor:
    """``x`` with a zero row appended: where a table's sentinel index points."""
    return torch.cat([x, x.new_zeros(1, x.shape[1])])


def _offset_sum(x: torch.Tensor, index: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Σ_k w[k] · x[index[:, k]] → (M, C), one offset at a time, accumulated in ≥ fp32."""
    rows, per_offset = _padded(x), index.t().contiguous()
    out = x.new_zeros(index.shape[0], x.shape[1], dtype=_accumulate_dtype(x.dtype))
    for k in range(per_offset.shape[0]):
        out.addcmul_(rows.index_select(0, per_offset[k]), w[k])
    return out.to(x.dtype)


def _offset_weight_grad(x: torch.Tensor, index: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """grad_w[k] = Σ_n x[index[n, k]] · grad_out[n] → (K, C) in ≥ fp32."""
    acc = _accumulate_dtype(x.dtype)
    rows, per_offset, g = _padded(x), index.t().contiguous(), grad_out.to(acc)
    return torch.stack([(rows.index_select(0, per_offset[k]).to(acc) * g).sum(0) for k in range(per_offset.shape[0])])


def depthwise_weight_kc(weight: torch.Tensor) -> torch.Tensor:
    """Dense depthwise weight (C, 1, kh, kw) → (K, C), the layout of the table kernels."""
    return weight.reshape(weight.shape[0], -1).t()


def table_depthwise(features: torch.Tensor, weight: torch.Tensor, table: ConvTable) -> torch.Tensor:
    """The twin on an explicit table: (N_in, C) features, dense-layout weight → (N_out, C)."""
    return TableDepthwiseConv.apply(features.contiguous(), depthwise_weight_kc(weight), table)
