"""SparK's masked-dense max-pool at the active output sites, in two implementations with one meaning.

The reference pools the map whose masked sites hold 0 (and pads the image border with −inf), so
here a masked neighbour reads 0 and a pixel outside the image −inf: values, and which input wins
each tie (the first in row-major window order, as the dense kernel picks), hence the gradients,
are the reference's.

- ``table_max_pool``: the max over each output's window, gathered through the geometry's window table;
- ``tiles_max_pool``: one dense ``max_pool2d`` per tile shape on halo tiles (kernels/tile_conv.py),
  where the window splits into the patch blocks.
Which one runs a layer is the router's decision (spark_sparse/routing/: ``maxpool-table``,
``maxpool-tiles``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..features import SparseFeatures
from ..spec import Pair
from .gather import gather_rows
from .tile_conv import tile_max_pool


@dataclass(frozen=True)
class PoolSpec:
    """A max-pool on the active sites: what the router reads of it, as ``ConvSpec`` of a conv."""
    channels: int
    kernel: Pair
    stride: Pair
    padding: Pair
    dilation: Pair = (1, 1)


def table_max_pool(x: SparseFeatures, spec: PoolSpec) -> torch.Tensor:
    rows = x.geometry.window_rows(x.stride, spec.kernel, spec.stride, spec.padding, spec.dilation)
    return gather_rows(x.features, rows, (0.0, float("-inf"))).max(dim=1).values


def tiles_max_pool(x: SparseFeatures, spec: PoolSpec) -> torch.Tensor:
    return tile_max_pool(x, spec.kernel[0], spec.stride[0], spec.padding[0])
