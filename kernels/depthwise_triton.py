"""Triton kernels of the sparse depthwise convolution, on the same ConvTable as the PyTorch twin.

- forward: ``out[n, c] = Σ_k w[k, c] · x[gather[n, k], c]`` (a sentinel index reads zero);
- input gradient: the same kernel on the inverse table, ``grad_x[i, c] = Σ_k w[k, c] · g[scatter[i, k], c]``
  (a gather, not an atomic scatter, so it is deterministic);
- weight gradient: per block of rows, partial sums written to a (blocks, K, C) buffer and summed
  by PyTorch afterwards (deterministic again).
Accumulation is in fp32 for fp32, fp16 and bf16 inputs; outputs have the input dtype.

Without a GPU, the kernels run in Triton's interpreter when ``TRITON_INTERPRET=1`` is set before
triton is first imported (tests/conftest.py does so on machines without CUDA): that is how the
tests check them against ``kernels.depthwise_table.TableDepthwiseConv`` on the CPU.
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from ..geometry import ConvTable
from .depthwise_table import depthwise_weight_kc, table_conv_function
from .triton_support import triton_unsupported


@triton.jit
def _gather_conv_kernel(x_ptr, w_ptr, index_ptr, out_ptr, n_rows, sentinel, C, K,
                        BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[n, c] = Σ_k w[k, c] · x[index[n, k], c]; rows n < n_rows; index == sentinel reads 0."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    chans = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < n_rows
    chan_ok = chans < C
    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
    for k in range(0, K):
        src = tl.load(index_ptr + rows.to(tl.int64) * K + k, mask=row_ok, other=sentinel)
        hit = src < sentinel
        xv = tl.load(x_ptr + src.to(tl.int64)[:, None] * C + chans[None, :],
                     mask=hit[:, None] & chan_ok[None, :], other=0.0)
        wv = tl.load(w_ptr + k * C + chans, mask=chan_ok, other=0.0)
        acc += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * C + chans[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & chan_ok[None, :])


@triton.jit
def _weight_grad_kernel(x_ptr, g_ptr, index_ptr, part_ptr, n_rows, sentinel, C, K,
                        BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """part[block, k, c] = Σ_{n in block} x[index[n, k], c] · g[n, c]."""
    block = tl.program_id(0)
    rows = block * BLOCK_N + tl.arange(0, BLOCK_N)
    chans = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < n_rows
    chan_ok = chans < C
    g = tl.load(g_ptr + rows.to(tl.int64)[:, None] * C + chans[None, :],
                mask=row_ok[:, None] & chan_ok[None, :], other=0.0).to(tl.float32)
    for k in range(0, K):
        src = tl.load(index_ptr + rows.to(tl.int64) * K + k, mask=row_ok, other=sentinel)
        hit = src < sentinel
        xv = tl.load(x_ptr + src.to(tl.int64)[:, None] * C + chans[None, :],
                     mask=hit[:, None] & chan_ok[None, :], other=0.0)
        part = tl.sum(xv.to(tl.float32) * g, axis=0)
        tl.store(part_ptr + (block.to(tl.int64) * K + k) * C + chans, part, mask=chan_ok)


def _check_device(x: torch.Tensor) -> None:
    why = triton_unsupported(x.device)
    if why is not None:
        raise RuntimeError(f"{why} (or run the depthwise conv as 'depthwise-tiles' or 'depthwise-table')")


def _blocks(c: int) -> Tuple[int, int]:
    return 64, min(64, triton.next_power_of_2(max(c, 1)))


def _gather_conv(x: torch.Tensor, w: torch.Tensor, index: torch.Tensor, n_rows: int, sentinel: int) -> torch.Tensor:
    c, k = x.shape[1], w.shape[0]
    out = torch.empty(n_rows, c, dtype=x.dtype, device=x.device)
    if n_rows == 0 or c == 0:
        return out
    _check_device(x)
    bn, bc = _blocks(c)
    _gather_conv_kernel[(triton.cdiv(n_rows, bn), triton.cdiv(c, bc))](x, w, index, out, n_rows, sentinel, c, k,
                                                        BLOCK_N=bn, BLOCK_C=bc)
    return out


def _weight_grad(x: torch.Tensor, g: torch.Tensor, index: torch.Tensor, n_in: int, k: int) -> torch.Tensor:
    n_out, c = g.shape
    bn, bc = _blocks(c)
    blocks = triton.cdiv(n_out, bn)
    part = torch.zeros(max(blocks, 1), k, c, dtype=torch.float32, device=g.device)
    if n_out and c:
        _check_device(g)
        _weight_grad_kernel[(blocks, triton.cdiv(c, bc))](x, g, index, part, n_out, n_in, c, k, BLOCK_N=bn, BLOCK_C=bc)
    return part.sum(0)


TritonDepthwiseConv = table_conv_function(
    "TritonDepthwiseConv", "Same contract as ``kernels.depthwise_table.TableDepthwiseConv``, in Triton.",
    _gather_conv, _weight_grad)


def triton_depthwise(features: torch.Tensor, weight: torch.Tensor, table: ConvTable) -> torch.Tensor:
    """(N_in, C) features, dense-layout weight (C, 1, kh, kw) → (N_out, C), no bias."""
    w = depthwise_weight_kc(weight).contiguous()
    return TritonDepthwiseConv.apply(features.contiguous(), w, table)
