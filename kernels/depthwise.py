"""Sparse depthwise k×k convolution (ConvNeXt's 7×7), in four implementations with one meaning.

Outputs at the active sites, inputs from active sites, masked neighbours and the image border read
as zero, as a dense zero-padded conv on the masked map reads them. Bias is not applied here (the
layer adds it).

- ``table``  — the semantic twin: a K-term weighted sum per channel over the geometry's neighbour
  table, in plain PyTorch; backward through the inverse table (no scatter-add). Any stride.
- ``tiles``  — gather each run of visible patches with a k//2 halo (kernels/tiles.py) and run the
  dense depthwise conv (oneDNN / cuDNN, channels-last, no padding) on each tile shape's batch.
  Here and in ``dense`` the CPU's weight gradient is kernels/depthwise_conv.py's (torch's is slow).
- ``dense``  — scatter to the dense (B, C, H, W) map (zeros at masked sites; channels-last memory,
  as oneDNN's depthwise backward is many times slower on NCHW), dense depthwise conv, gather the
  active sites. Costs the full map, which at strides 8 to 32 is smaller than the tiles' halos.
- ``triton`` — Triton kernels on the neighbour table (kernels/depthwise_triton.py), for GPUs; on
  CPU tensors they run in Triton's interpreter (tests only).

Which one runs a layer is the router's decision (spark_sparse/routing/, names ``depthwise-<impl>``).
"""
from __future__ import annotations

import torch

from ..features import SparseFeatures
from ..geometry import ConvTable
from ..spec import ConvSpec, compute_dtype
from .depthwise_conv import depthwise_conv2d
from .depthwise_table import table_depthwise
from .tiles import gather_tiles

IMPLS = ("table", "tiles", "dense", "triton")


def _conv_table(x: SparseFeatures, spec: ConvSpec) -> ConvTable:
    return x.geometry.conv_table(x.stride, spec.kernel, spec.stride, spec.padding, spec.dilation)


def _via_table(x: SparseFeatures, weight: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    return table_depthwise(x.features, weight, _conv_table(x, spec))


def _via_tiles(x: SparseFeatures, weight: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    tiles = gather_tiles(x, spec.padding[0])
    return tiles.assemble([depthwise_conv2d(t, weight, (0, 0), spec.dilation) for t in tiles.tensors])


def _via_dense(x: SparseFeatures, weight: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    dense = x.dense(memory_format=torch.channels_last)
    y = depthwise_conv2d(dense, weight, spec.padding, spec.dilation)  # channels-last in and out
    return SparseFeatures.from_dense(y, x.geometry, x.stride).features


def _via_triton(x: SparseFeatures, weight: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    from .depthwise_triton import triton_depthwise
    return triton_depthwise(x.features, weight, _conv_table(x, spec))


_RUN = {"table": _via_table, "tiles": _via_tiles, "dense": _via_dense, "triton": _via_triton}


def why_unsupported(impl: str, spec: ConvSpec) -> str | None:
    """Why ``impl`` cannot run ``spec`` (None when it can)."""
    if not spec.is_depthwise:
        return f"not a depthwise convolution (groups={spec.groups}, channels {spec.in_channels}→{spec.out_channels})"
    if impl in ("tiles", "dense"):
        same = all(p == d * (k - 1) // 2 and k % 2 == 1 for k, p, d in zip(spec.kernel, spec.padding, spec.dilation))
        if spec.stride != (1, 1) or not same or spec.padding[0] != spec.padding[1]:
            return (f"'{impl}' needs stride 1 and 'same' padding equal on both axes (got kernel {spec.kernel}, "
                    f"stride {spec.stride}, padding {spec.padding}, dilation {spec.dilation})")
    return None


def sparse_depthwise_conv(x: SparseFeatures, weight: torch.Tensor, spec: ConvSpec, impl: str) -> torch.Tensor:
    """Depthwise conv of ``x`` with a dense-layout weight (C, 1, kh, kw) → (N_out, C), no bias.

    ``impl``: 'table', 'tiles', 'dense' or 'triton'. Runs in the autocast dtype when autocast is on.
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown depthwise implementation {impl!r}; choose one of {', '.join(IMPLS)}")
    reason = why_unsupported(impl, spec)
    if reason is not None:
        raise ValueError(f"depthwise implementation {impl!r} cannot run this layer: {reason}")
    dtype = compute_dtype(x.features)
    x = x.replace(x.features.to(dtype))
    return _RUN[impl](x, weight.to(dtype), spec)
