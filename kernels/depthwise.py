"""Sparse depthwise k×k convolution (ConvNeXt's 7×7), in four implementations with one meaning.

Each takes (x, the dense-layout weight (C, 1, kh, kw), spec) and returns (N_out, C), computed in
the autocast dtype when autocast is on. Outputs at the active sites, inputs from active sites,
masked neighbours and the image border read as zero, as a dense zero-padded conv on the masked map
reads them. Bias is not applied here (the layer adds it).

- ``depthwise_table`` — the semantic twin: a K-term weighted sum per channel over the geometry's
  neighbour table, in plain PyTorch; backward through the inverse table (no scatter-add). Any stride.
- ``depthwise_tiles`` — gather each run of visible patches with a k//2 halo (kernels/tiles.py) and
  run the dense depthwise conv (oneDNN / cuDNN, channels-last, no padding) on each tile shape's
  batch. Here and in ``depthwise_dense`` the CPU's weight gradient is kernels/depthwise_conv.py's
  (torch's is slow).
- ``depthwise_dense`` — scatter to the dense (B, C, H, W) map (zeros at masked sites; channels-last
  memory, as oneDNN's depthwise backward is many times slower on NCHW), dense depthwise conv, gather
  the active sites. Costs the full map, which at strides 8 to 32 is smaller than the tiles' halos.
- ``depthwise_triton`` — Triton kernels on the neighbour table (kernels/depthwise_triton.py), for
  GPUs; on CPU tensors they run in Triton's interpreter (tests only).

Which one runs a layer is the router's decision (spark_sparse/routing/implementations.py names them
``depthwise-table``, ``depthwise-tiles``, ``depthwise-dense``, ``depthwise-triton``).
"""
from __future__ import annotations

import torch

from ..features import SparseFeatures
from ..geometry import ConvTable
from ..spec import ConvSpec, compute_dtype
from .depthwise_conv import depthwise_conv2d
from .depthwise_table import table_depthwise
from .tiles import gather_tiles

def _in_compute_dtype(x: SparseFeatures, weight: torch.Tensor):
    """``x`` and ``weight`` in the dtype the conv computes in (autocast's, when autocast is on)."""
    dtype = compute_dtype(x.features)
    return x.replace(x.features.to(dtype)), weight.to(dtype)


def _conv_table(x: SparseFeatures, spec: ConvSpec) -> ConvTable:
    return x.geometry.conv_table(x.stride, spec.kernel, spec.stride, spec.padding, spec.dilation)


def depthwise_table(x: SparseFeatures, weight: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    x, weight = _in_compute_dtype(x, weight)
    return table_depthwise(x.features, weight, _conv_table(x, spec))


def depthwise_tiles(x: SparseFeatures, weight: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    x, weight = _in_compute_dtype(x, weight)
    tiles = gather_tiles(x, spec.padding[0])
    return tiles.assemble([depthwise_conv2d(t, weight, (0, 0), spec.dilation) for t in tiles.tensors])


def depthwise_dense(x: SparseFeatures, weight: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    x, weight = _in_compute_dtype(x, weight)
    dense = x.dense(memory_format=torch.channels_last)
    y = depthwise_conv2d(dense, weight, spec.padding, spec.dilation)  # channels-last in and out
    return SparseFeatures.from_dense(y, x.geometry, x.stride).features


def depthwise_triton(x: SparseFeatures, weight: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    from .depthwise_triton import triton_depthwise  # imports triton: only when this one runs
    x, weight = _in_compute_dtype(x, weight)
    return triton_depthwise(x.features, weight, _conv_table(x, spec))


def same_padding_unsupported(spec: ConvSpec) -> str | None:
    """Why ``depthwise_tiles`` / ``depthwise_dense`` cannot run ``spec`` (None when they can): both
    run the dense stride-1 conv and keep its outputs at the input's sites."""
    same = all(p == d * (k - 1) // 2 and k % 2 == 1 for k, p, d in zip(spec.kernel, spec.padding, spec.dilation))
    if spec.stride != (1, 1) or not same or spec.padding[0] != spec.padding[1]:
        return (f"needs stride 1 and 'same' padding equal on both axes (got kernel {spec.kernel}, "
                f"stride {spec.stride}, padding {spec.padding}, dilation {spec.dilation})")
    return None
