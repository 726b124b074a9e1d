"""Sparse depthwise k×k convolution (ConvNeXt's 7×7), in four implementations with one meaning.

Outputs at the active sites, inputs from active sites, masked neighbours and the image border read
as zero (CONTRACT.md, "Conv2d stride 1"). Bias is not applied here (the layer adds it).

- ``table``  — the semantic twin: a K-term weighted sum per channel over the geometry's neighbour
  table, in plain PyTorch; backward through the inverse table (no scatter-add). Any stride.
- ``tiles``  — gather each run of visible patches with a k//2 halo (kernels/tiles.py) and run the
  dense depthwise conv (oneDNN / cuDNN, channels-last, no padding) on each tile shape's batch.
- ``dense``  — scatter to the dense (B, C, H, W) map (zeros at masked sites; channels-last memory,
  as oneDNN's depthwise backward is many times slower on NCHW), dense depthwise conv, gather the
  active sites. Costs the full map, which at strides 8 to 32 is smaller than the tiles' halos.
- ``triton`` — Triton kernels on the neighbour table (kernels/depthwise_triton.py), for GPUs; on
  CPU tensors they run in Triton's interpreter (tests only).

``impl="auto"`` picks per layer from the device and the patch block size r (see ``choose_impl``).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..backends.base import ConvSpec, compute_dtype
from ..features import SparseFeatures
from ..geometry import ConvTable
from .tiles import gather_tiles

IMPLS = ("auto", "table", "tiles", "dense", "triton")


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


def _conv_table(x: SparseFeatures, spec: ConvSpec) -> ConvTable:
    return x.geometry.conv_table(x.stride, spec.kernel, spec.stride, spec.padding, spec.dilation)


def _via_table(x: SparseFeatures, weight: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    return table_depthwise(x.features, weight, _conv_table(x, spec))


def _via_tiles(x: SparseFeatures, weight: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    tiles = gather_tiles(x, spec.padding[0])
    return tiles.assemble([F.conv2d(t, weight, None, 1, 0, spec.dilation, spec.groups) for t in tiles.tensors])


def _via_dense(x: SparseFeatures, weight: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    g, r, c = x.geometry, x.level.r, x.channels
    (h, w), p = g.grid_hw, g.patches
    dense = x.dense()  # channels-last memory: oneDNN's depthwise kernels want it in and out
    y = F.conv2d(dense, weight, None, 1, spec.padding, spec.dilation, spec.groups)
    blocks = y.permute(0, 2, 3, 1).reshape(g.batch, h, r, w, r, c).permute(0, 1, 3, 2, 4, 5)
    return blocks[p[:, 0], p[:, 1], p[:, 2]].reshape(-1, c)


def _via_triton(x: SparseFeatures, weight: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    from .depthwise_triton import triton_depthwise
    return triton_depthwise(x.features, weight, _conv_table(x, spec))


_RUN = {"table": _via_table, "tiles": _via_tiles, "dense": _via_dense, "triton": _via_triton}


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def why_unsupported(impl: str, spec: ConvSpec) -> str | None:
    """Why ``impl`` cannot run ``spec`` (None when it can)."""
    if not spec.is_depthwise:
        return f"not a depthwise convolution (groups={spec.groups}, channels {spec.in_channels}→{spec.out_channels})"
    if impl in ("tiles", "dense"):
        same = all(p == d * (k - 1) // 2 and k % 2 == 1 for k, p, d in zip(spec.kernel, spec.padding, spec.dilation))
        if spec.stride != (1, 1) or not same or spec.padding[0] != spec.padding[1]:
            return (f"'{impl}' needs stride 1 and 'same' padding equal on both axes (got kernel {spec.kernel}, "
                    f"stride {spec.stride}, padding {spec.padding}, dilation {spec.dilation})")
    if impl == "triton" and not triton_available():
        return "'triton' needs the triton package (pip install triton)"
    return None


# oneDNN / cuDNN have fast depthwise kernels for these; fp64 falls back to a per-channel slow conv.
FAST_CONV_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Halo tiles pay (r + 2h)·(k·r + 2h) / (k·r²) sites per site for a run of k patches (kernels/tiles.py):
# 2.1x at r = 8 and 3.4x at r = 4 for runs of 4 (3.1x and 6.3x for single patches), 7x at r = 2,
# 49x at r = 1 for a 7×7 kernel; the dense map pays 1/(visible fraction) (2.5x at mask ratio 0.6)
# plus its scatter and gather. Below this block size the dense map is cheaper (table below).
TILES_MIN_R = 4


def choose_impl(spec: ConvSpec, r: int, device: torch.device, dtype: torch.dtype) -> str:
    """The implementation ``auto`` runs for one layer, from its patch block size ``r`` = patch/stride.

    Measured on this project's CPU (ConvNeXt-T widths, 224², batch 16, fwd+bwd, median of 5
    interleaved calls, CPU time of 1 thread, the 2 cores shared with ~10 other jobs; ms), wide tiles
    (runs of up to 4 patches) against the channels-last dense map:

        stride (r)  C    mask 0.6        mask 0.75       mask 0.9
                         tiles  dense    tiles  dense    tiles  dense
        4 (8)       96   66-75  110-126  –      –        –      –      → tiles
        8 (4)       192  49-56  52-58    33     66       17     70     → tiles
        16 (2)      384  53-55  28-29    62     34       16     25     → dense
        32 (1)      768  (49 sites of tile per site)                   → dense

    At stride 8 the two tie at SparK's mask ratio 0.6 and tiles win 2-4x above it; at stride 16
    tiles win only at 0.9. Single-patch tiles (before runs shared their halo) lost at stride 8
    (102 vs 52 ms at 0.6), hence the older rule "tiles for r >= 8".

    CUDA: not measured yet (no GPU in this project so far); the same rule runs cuDNN's depthwise
    kernels. The Triton kernels are opt-in (``impl='triton'`` / ``encoder.set_depthwise('triton')``)
    until ``depthwise_select --device cuda`` says where they win. fp64 runs the table twin.
    """
    if why_unsupported("tiles", spec) is not None or dtype not in FAST_CONV_DTYPES:
        return "table"
    return "tiles" if r >= TILES_MIN_R else "dense"


def sparse_depthwise_conv(x: SparseFeatures, weight: torch.Tensor, spec: ConvSpec, impl: str = "auto") -> torch.Tensor:
    """Depthwise conv of ``x`` with a dense-layout weight (C, 1, kh, kw) → (N_out, C), no bias.

    ``impl``: 'auto' (per layer, see ``choose_impl``), 'table', 'tiles', 'dense' or 'triton'.
    Runs in the autocast dtype when autocast is on.
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown depthwise implementation {impl!r}; choose one of {', '.join(IMPLS)}")
    if impl == "auto":
        impl = choose_impl(spec, x.level.r, x.features.device, compute_dtype(x.features))
    reason = why_unsupported(impl, spec)
    if reason is not None:
        raise ValueError(f"depthwise implementation {impl!r} cannot run this layer: {reason}")
    dtype = compute_dtype(x.features)
    x = x.replace(x.features.to(dtype))
    return _RUN[impl](x, weight.to(dtype), spec)
