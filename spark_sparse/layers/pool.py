"""Pooling on active sites: outputs exactly at the next stride's active sites."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UnsupportedLayerError
from ..features import SparseFeatures
from ..geometry import maps_to_next_level
from ..kernels.tile_conv import tile_max_pool
from ..kernels.tiles import window_halo
from .base import SparseModule


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


class SparseMaxPool2d(SparseModule):
    """SparK's masked-dense max-pool at the active output sites.

    The reference pools the map whose masked sites hold 0 (and pads the image border with −inf),
    so here a masked neighbour reads 0 and a pixel outside the image −inf: values, and which
    input wins each tie (the first in row-major window order, as the dense kernel picks), hence
    the gradients, are the reference's. Runs on halo tiles (one dense max_pool2d per tile shape)
    when the window splits into the patch blocks, else on the window table.
    """

    def __init__(self, kernel_size, stride, padding):
        super().__init__()
        self.kernel_size, self.stride, self.padding = _pair(kernel_size), _pair(stride), _pair(padding)

    def forward(self, x: SparseFeatures) -> SparseFeatures:
        k, s, p = self.kernel_size[0], self.stride[0], self.padding[0]
        square = self.kernel_size[1] == k and self.stride[1] == s and self.padding[1] == p
        if square and x.level.r % s == 0 and min(window_halo(k, s, p)) >= 0:
            out = tile_max_pool(x, k, s, p)
        else:
            out = self._via_table(x)
        return x.replace(out, stride=x.stride * s)

    def _via_table(self, x: SparseFeatures) -> torch.Tensor:
        rows = x.geometry.window_rows(x.stride, self.kernel_size, self.stride, self.padding, (1, 1))
        feats = x.features
        pad = feats.new_tensor([[0.0], [float("-inf")]]).expand(2, feats.shape[1])
        windows = torch.cat([feats, pad]).index_select(0, rows.reshape(-1)).view(*rows.shape, feats.shape[1])
        return windows.max(dim=1).values

    @classmethod
    def from_dense(cls, pool: nn.MaxPool2d, path: str) -> "SparseMaxPool2d":
        if pool.ceil_mode or _pair(pool.dilation) != (1, 1) or pool.return_indices:
            raise UnsupportedLayerError(path, pool, "only ceil_mode=False, dilation=1 max-pools")
        k, st, p = _pair(pool.kernel_size), _pair(pool.stride), _pair(pool.padding)
        if st[0] != st[1] or not all(maps_to_next_level(*v) for v in zip(k, st, p)):
            raise UnsupportedLayerError(path, pool, "the pooled size must be exactly input/stride "
                                                    "(e.g. kernel 3, stride 2, padding 1)")
        return cls(pool.kernel_size, pool.stride, pool.padding)


class SparseAvgPool2d(SparseModule):
    """Average pool whose window equals its stride (ResNet-D shortcut): a mean within each patch tile.

    Such a window never crosses a patch, so it never sees a masked site: dividing by the full
    window is exactly what the masked-dense reference does.
    """

    def __init__(self, kernel: int):
        super().__init__()
        self.kernel = kernel

    def forward(self, x: SparseFeatures) -> SparseFeatures:
        k = self.kernel
        r = x.level.r
        t = x.tiles().view(-1, r // k, k, r // k, k, x.channels)
        return x.replace(t.mean(dim=(2, 4)).reshape(-1, x.channels), stride=x.stride * k)

    @classmethod
    def from_dense(cls, pool: nn.AvgPool2d, path: str) -> "SparseAvgPool2d":
        k, s, p = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size), _pair(pool.padding)
        if k != s or k[0] != k[1] or p != (0, 0) or pool.divisor_override:
            raise UnsupportedLayerError(
                path, pool, "only square average pools with kernel == stride and no padding: other windows "
                            "cross masked patches, where SparK's reference divides by the full window")
        return cls(k[0])
