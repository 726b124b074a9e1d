"""Tile convolution: a dense convolution on every visible patch's block plus its halo.

SparK's masks are whole patches, so a k×k conv (stride 1 or strided) on the active sites is the
dense, unpadded conv of each run of adjacent visible patches grown by the border its window reads
(``tiles.window_halo``), with zeros where the border falls on a masked patch or outside the image.
One batched oneDNN / cuDNN call per tile shape (runs of 1, 2 and 4 patches) computes exactly the
sparse FLOPs, and its backward is the library's conv backward plus the gather's inverse (no
scatter-add).

It pays the halo (for a 3×3 conv the gather copies (r + 2)(k·r + 2)/(k·r²) of the input: 1.33x at
r = 8 and 1.69x at r = 4 for runs of 4, 1.56x and 2.25x for single patches; the input gradient
computes those halo pixels too) and small-image efficiency of the dense kernels, so it wins at fine
strides and loses to the gather-GEMM rulebook at coarse ones: ``tile_conv`` is the ``tiles`` backend
and the router (spark_sparse/routing/) decides per layer.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..features import SparseFeatures
from ..spec import ConvSpec, compute_dtype
from .tiles import gather_tiles, window_halo


def tile_halo(spec: ConvSpec):
    """(before, after) border of a conv's window; ``after`` < 0 means the window never reaches it."""
    return window_halo(spec.kernel[0], spec.stride[0], spec.padding[0], spec.dilation[0])


def tiles_unsupported(spec: ConvSpec, r: Optional[int] = None) -> Optional[str]:
    square = (spec.kernel[0] == spec.kernel[1] and spec.stride[0] == spec.stride[1]
              and spec.padding[0] == spec.padding[1] and spec.dilation[0] == spec.dilation[1])
    if not square:
        return "only square kernels, strides, paddings and dilations"
    if min(tile_halo(spec)) < 0:
        return f"window {spec.kernel}/{spec.stride} with padding {spec.padding} reads no border after the block"
    if r is not None and r % spec.stride[0]:
        return f"a patch block of {r}×{r} sites does not split into stride-{spec.stride[0]} outputs"
    return None


def tile_conv(x: SparseFeatures, weight: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    """(N_out, C_out) outputs of the conv at the next stride's active sites; bias not applied."""
    dtype = compute_dtype(x.features)
    tiles = gather_tiles(x.replace(x.features.to(dtype)), tile_halo(spec))
    w = weight.to(dtype)
    return tiles.assemble([F.conv2d(t, w, None, spec.stride, 0, spec.dilation, spec.groups) for t in tiles.tensors],
                          spec.stride[0])


def tile_max_pool(x: SparseFeatures, kernel: int, stride: int, padding: int) -> torch.Tensor:
    """The max-pool of SparK's masked-dense map at the next level's active sites: masked pixels read
    0 (the reference zeroes them), pixels outside the image −inf (max_pool2d's padding), so values
    and the winner of every tie — hence the gradients — are the reference's."""
    tiles = gather_tiles(x, window_halo(kernel, stride, padding), border_fill=float("-inf"))
    return tiles.assemble([F.max_pool2d(t, kernel, stride, 0) for t in tiles.tensors], stride)

